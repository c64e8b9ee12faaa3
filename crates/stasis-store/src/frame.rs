//! Shared frames: several new blocks compressed as one zstd frame.
//!
//! Per-block zstd restarts its window at every block, so what neighbouring blocks
//! share (file-system metadata, text, the pages of one guest) is paid again in each.
//! A write session therefore groups the new data blocks of a batch into frames of
//! about [`crate::config::RepoConfig::frame_size`] bytes and stores each frame once; every
//! member keeps its own pack and index entry, naming the frame's stored range
//! ([`crate::codec::Codec::ZstdFrame`]) and where its bytes start in the decoded frame.
//! Dedup stays per block. A read decodes the whole frame, so frames are kept small
//! (a random 4 KiB read decodes at most one frame) and decoded frames are cached here
//! so that a sequential reader decodes each one once.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

use crate::backend::Backend;
use crate::codec;
use crate::error::Result;
use crate::id::PackId;
use crate::index::Location;
use crate::pack::{self, FRAME_SKIP_UNIT};

/// Bound of the frame cache of one pass over whole packs (verify, gc's repack,
/// repair), which reads each frame's members one after another.
pub const SCAN_CACHE_BYTES: u64 = 16 << 20;

/// Recently decoded frames by (pack, offset), most recent first, bounded in bytes.
///
/// A plain LRU list rather than the block cache's policy: a frame is wanted again
/// right after it is decoded (its next members), and a scan-resistant cache would admit
/// it to a small probation part where a 256 KiB frame does not fit.
#[derive(Debug)]
pub struct FrameCache {
    frames: Mutex<VecDeque<((PackId, u64), Bytes)>>,
    max_bytes: usize,
}

impl FrameCache {
    /// A cache holding up to `bytes` of decoded frames (and always the newest one).
    pub fn new(bytes: u64) -> FrameCache {
        FrameCache {
            frames: Mutex::new(VecDeque::new()),
            max_bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<((PackId, u64), Bytes)>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decoded frame that `loc` (a [`crate::codec::Codec::ZstdFrame`] member of
    /// `pack`) lies in; read and decoded on a miss (damaged frames are not cached).
    pub fn frame(&self, backend: &dyn Backend, pack: &PackId, loc: &Location) -> Result<Bytes> {
        let key = (*pack, loc.offset);
        {
            let mut frames = self.lock();
            if let Some(at) = frames.iter().position(|(k, _)| *k == key) {
                let hit = frames.remove(at);
                let bytes = hit.as_ref().map(|(_, b)| b.clone());
                if let Some(hit) = hit {
                    frames.push_front(hit);
                }
                if let Some(b) = bytes {
                    return Ok(b);
                }
            }
        }
        // Decoded outside the lock: two readers may rarely decode the same frame.
        let pkey = pack::pack_key(pack);
        let stored = backend.get(
            &pkey,
            Some(loc.offset..loc.offset + u64::from(loc.stored_len)),
        )?;
        let mut out = Vec::new();
        codec::decompress_frame(&stored, &mut out)
            .map_err(|e| e.context(format!("frame at {} in {pkey}", loc.offset)))?;
        let b = Bytes::from(out);
        let mut frames = self.lock();
        if !frames.iter().any(|(k, _)| *k == key) {
            frames.push_front((key, b.clone()));
            let mut total: usize = frames.iter().map(|(_, f)| f.len()).sum();
            while total > self.max_bytes && frames.len() > 1 {
                total -= frames.pop_back().map_or(0, |(_, f)| f.len());
            }
        }
        Ok(b)
    }
}

/// Split `lens` (the lengths of a batch's new blocks, in order) into frames of at most
/// `frame_size` bytes: returns each frame's range of positions. A block of `frame_size`
/// or more, or all of them when `frame_size` is 0, gets a range of one; only a block
/// whose length is a multiple of [`FRAME_SKIP_UNIT`] can be followed by another.
pub fn plan(lens: &[usize], frame_size: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, &len) in lens.iter().enumerate() {
        let fits = bytes + len <= frame_size && i > start;
        if i > start && !fits {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += len;
        // Nothing can follow an unaligned block, nor join a frame already full.
        let unaligned = !len.is_multiple_of(FRAME_SKIP_UNIT as usize);
        if unaligned || bytes >= frame_size {
            out.push(start..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_is_decoded_once_for_its_members_until_evicted() {
        use crate::backend::MemoryBackend;
        use crate::codec::{Codec, Compression, compress};
        use crate::id::Id;
        use crate::pack::{BlobKind, FrameMember, PackBuilder};

        // Three frames of four 64 KiB blocks (256 KiB each), in one pack.
        let mut b = PackBuilder::new();
        let mut members = Vec::new();
        for f in 0..3u8 {
            let blocks: Vec<Vec<u8>> = (0..4u8).map(|k| vec![f * 4 + k; 64 << 10]).collect();
            let ms: Vec<FrameMember> = blocks
                .iter()
                .enumerate()
                .map(|(k, d)| FrameMember {
                    id: Id::of(d),
                    raw_len: d.len() as u32,
                    skip: (k as u32) << 16,
                })
                .collect();
            let mut stored = Vec::new();
            let c = compress(Compression::default(), &blocks.concat(), &mut stored);
            assert_eq!(c.expect("compress"), Codec::Zstd);
            b.add_frame(BlobKind::Data, &ms, &stored).expect("frame");
            members.push(ms);
        }
        let (pid, bytes, entries) = b.finish().expect("finish");
        let be = MemoryBackend::new();
        be.put(&pack::pack_key(&pid), &bytes).expect("put");
        let loc = |f: usize, k: usize| Location::of(0, &entries[f * 4 + k]);
        let cache = FrameCache::new(512 << 10);
        for f in 0..3 {
            let frame = cache.frame(&be, &pid, &loc(f, 0)).expect("decode");
            assert_eq!(frame.len(), 256 << 10);
        }
        // With the pack gone, the newest frames still serve every member; the oldest,
        // evicted past 512 KiB, does not.
        be.delete(&pack::pack_key(&pid)).expect("delete");
        for (f, ms) in members.iter().enumerate().skip(1) {
            for (k, m) in ms.iter().enumerate() {
                let frame = cache.frame(&be, &pid, &loc(f, k)).expect("cached");
                let s = m.skip as usize;
                assert_eq!(Id::of(&frame[s..s + m.raw_len as usize]), m.id);
            }
        }
        assert!(cache.frame(&be, &pid, &loc(0, 1)).is_err());
    }

    #[test]
    fn plans_group_aligned_blocks_up_to_the_frame_size() {
        let k = 4096;
        assert_eq!(plan(&[k; 5], 2 * k), vec![0..2, 2..4, 4..5]);
        assert_eq!(plan(&[k; 3], 0), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan(&[k, 100, k, k], 16 * k), vec![0..2, 2..4]);
        assert_eq!(plan(&[k, 64 * k, k], 16 * k), vec![0..1, 1..2, 2..3]);
        assert!(plan(&[], 16 * k).is_empty());
    }

    proptest! {
        #[test]
        fn plans_cover_every_block_once_within_bounds(
            lens in proptest::collection::vec(prop_oneof![Just(4096usize), Just(65536), 1usize..70000], 0..60),
            frame in prop_oneof![Just(0usize), Just(65536), Just(262144)],
        ) {
            let p = plan(&lens, frame);
            let mut next = 0;
            for r in &p {
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start);
                next = r.end;
                let total: usize = lens[r.clone()].iter().sum();
                prop_assert!(r.len() == 1 || total <= frame);
                for &l in &lens[r.start..r.end - 1] {
                    prop_assert!(l.is_multiple_of(4096));
                }
                let skip_end: usize = lens[r.start..r.end - 1].iter().sum();
                prop_assert!(skip_end <= pack::MAX_FRAME_SKIP as usize);
            }
            prop_assert_eq!(next, lens.len());
        }
    }
}
