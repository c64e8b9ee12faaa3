//! Shared frames: several new blocks compressed as one zstd frame.
//!
//! Per-block zstd restarts its window at every block, so what neighbouring blocks
//! share (file-system metadata, text, the pages of one guest) is paid again in each.
//! A write session therefore groups the new data blocks of a batch into frames of
//! about [`crate::format::config::StoreConfig::frame_size`] bytes and stores each frame once; every
//! member keeps its own pack and index entry, naming the frame's stored range
//! ([`crate::format::codec::Codec::ZstdFrame`]) and where its bytes start in the decoded frame.
//! Dedup stays per block. A read decodes the whole frame, so frames are kept small
//! (a random 4 KiB read decodes at most one frame) and decoded frames are cached here
//! so that a sequential reader decodes each one once.
//!
//! A frame some of whose members are stored XORed with a similar block
//! ([`crate::format::codec::Codec::ZstdFrameXor`], see [`crate::similarity`]) starts with a
//! reference table before its zstd frame (all its members' codecs say so):
//! a u16 count `n` (at least 1), then `n` entries of a u16 skip (in
//! [`FRAME_SKIP_UNIT`]s, strictly increasing) and the 32-byte id of the reference of
//! the member at that skip; all little-endian.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::codec::{self, Codec};
use crate::format::keys;
use crate::format::refs;
use crate::id::{BlockId, PackId};
use crate::index::Location;
use crate::pack::FRAME_SKIP_UNIT;

/// Bound of the frame cache of one pass over whole packs (verify, gc's repack,
/// repair), which reads each frame's members one after another.
pub const SCAN_CACHE_BYTES: u64 = 16 << 20;

/// A decoded frame: its bytes and, for a frame with a reference table, each XOR
/// member's skip and reference.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The decoded bytes.
    pub bytes: Bytes,
    /// (skip, reference) of the members stored XORed, by skip; empty for a plain frame.
    pub refs: Arc<[(u32, BlockId)]>,
}

impl Frame {
    /// The reference of the member at `skip`, if it is stored XORed.
    pub fn reference(&self, skip: u32) -> Option<BlockId> {
        refs::reference_in(&self.refs, skip)
    }
}

/// Recently decoded frames by (pack, offset), most recent first, bounded in bytes.
///
/// A plain LRU list rather than the block cache's policy: a frame is wanted again
/// right after it is decoded (its next members), and a scan-resistant cache would admit
/// it to a small probation part where a 256 KiB frame does not fit.
#[derive(Debug)]
pub struct FrameCache {
    frames: Mutex<VecDeque<((PackId, u64), Frame)>>,
    max_bytes: usize,
    /// Buffers of evicted frames nobody else held, to decode the next frames into: a
    /// fresh 256 KiB buffer costs the kernel clearing (and, in a VM that reports free
    /// memory to its host, the host backing) every page of it as it is first touched.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// Evicted frame buffers kept for reuse.
const SPARE_BUFFERS: usize = 4;

impl FrameCache {
    /// A cache holding up to `bytes` of decoded frames (and always the newest one).
    pub fn new(bytes: u64) -> FrameCache {
        FrameCache {
            frames: Mutex::new(VecDeque::new()),
            max_bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
            spare: Mutex::new(Vec::new()),
        }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep an evicted frame's buffer for the next decode, if no reader holds it.
    fn recycle(&self, bytes: Bytes) {
        if let Ok(b) = bytes.try_into_mut() {
            let mut spares = self.spares();
            if spares.len() < SPARE_BUFFERS {
                spares.push(Vec::from(b));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<((PackId, u64), Frame)>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget every decoded frame of `pack` (its bytes failed a check).
    pub fn forget_pack(&self, pack: &PackId) {
        self.lock().retain(|((p, _), _)| p != pack);
    }

    /// Whether the frame at `offset` in `pack` is decoded here now.
    pub fn contains(&self, pack: &PackId, offset: u64) -> bool {
        self.lock().iter().any(|(k, _)| *k == (*pack, offset))
    }

    /// The decoded frame that `loc` (a member of a shared frame of `pack`, see
    /// [`Codec::in_frame`]) lies in; read and decoded on a miss (damaged frames are not
    /// cached).
    pub fn frame(&self, backend: &dyn Backend, pack: &PackId, loc: &Location) -> Result<Frame> {
        let key = (*pack, loc.offset);
        {
            let mut frames = self.lock();
            if let Some(at) = frames.iter().position(|(k, _)| *k == key) {
                let hit = frames.remove(at);
                let bytes = hit.as_ref().map(|(_, f)| f.clone());
                if let Some(hit) = hit {
                    frames.push_front(hit);
                }
                if let Some(b) = bytes {
                    return Ok(b);
                }
            }
        }
        // Decoded outside the lock: two readers may rarely decode the same frame.
        let pkey = keys::pack_key(pack);
        let stored = backend.get(&pkey, Some(loc.stored()))?;
        let at = |e: Error| e.context(format!("frame at {} in {pkey}", loc.offset));
        let (refs, zstd) = match loc.codec {
            Codec::ZstdFrame => (Vec::new(), &stored[..]),
            Codec::ZstdFrameRefs | Codec::ZstdFrameXor => refs::split_refs(&stored).map_err(at)?,
            c => return Err(at(Error::corrupt(format!("{c:?} is not a frame member")))),
        };
        let mut out = self.spares().pop().unwrap_or_default();
        codec::decompress_frame(zstd, &mut out).map_err(at)?;
        let f = Frame {
            bytes: Bytes::from(out),
            refs: refs.into(),
        };
        let mut frames = self.lock();
        if !frames.iter().any(|(k, _)| *k == key) {
            frames.push_front((key, f.clone()));
            let mut total: usize = frames.iter().map(|(_, f)| f.bytes.len()).sum();
            while total > self.max_bytes && frames.len() > 1 {
                let Some((_, old)) = frames.pop_back() else {
                    break;
                };
                total -= old.bytes.len();
                self.recycle(old.bytes);
            }
        }
        Ok(f)
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
        use crate::format::codec::{Codec, Compression, compress};
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
                .map(|(k, d)| FrameMember::plain(Id::of(d), d.len() as u32, (k as u32) << 16))
                .collect();
            let mut stored = Vec::new();
            let c = compress(Compression::default(), &blocks.concat(), &mut stored);
            assert_eq!(c.expect("compress"), Codec::Zstd);
            b.add_frame(BlobKind::Data, &ms, &stored).expect("frame");
            members.push(ms);
        }
        let (pid, bytes, entries) = b.finish().expect("finish");
        let be = MemoryBackend::new();
        be.put(&keys::pack_key(&pid), &bytes).expect("put");
        let loc = |f: usize, k: usize| Location::of(0, &entries[f * 4 + k]);
        let cache = FrameCache::new(512 << 10);
        for f in 0..3 {
            let frame = cache.frame(&be, &pid, &loc(f, 0)).expect("decode");
            assert_eq!(frame.bytes.len(), 256 << 10);
            assert!(frame.refs.is_empty());
        }
        // With the pack gone, the newest frames still serve every member; the oldest,
        // evicted past 512 KiB, does not.
        be.delete(&keys::pack_key(&pid)).expect("delete");
        for (f, ms) in members.iter().enumerate().skip(1) {
            for (k, m) in ms.iter().enumerate() {
                let frame = cache.frame(&be, &pid, &loc(f, k)).expect("cached");
                let s = m.skip as usize;
                assert_eq!(Id::of(&frame.bytes[s..s + m.raw_len as usize]), m.id);
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
                prop_assert!(skip_end <= crate::format::pack::MAX_FRAME_SKIP as usize);
            }
            prop_assert_eq!(next, lens.len());
        }
    }
}
