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

use bytes::Bytes;

use crate::backend::Backend;
use crate::codec;
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::Location;
use crate::pack::{self, FRAME_SKIP_UNIT};

#[derive(Clone, Debug)]
struct FrameWeight;
impl quick_cache::Weighter<(PackId, u64), Bytes> for FrameWeight {
    fn weight(&self, _: &(PackId, u64), v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

/// Decoded frames by (pack, offset), bounded in bytes.
#[derive(Debug)]
pub struct FrameCache {
    cache: quick_cache::sync::Cache<(PackId, u64), Bytes, FrameWeight>,
}

impl FrameCache {
    /// A cache holding up to `bytes` of decoded frames.
    pub fn new(bytes: u64) -> FrameCache {
        FrameCache {
            cache: quick_cache::sync::Cache::with_weighter(
                (bytes / (64 << 10)).max(4) as usize,
                bytes,
                FrameWeight,
            ),
        }
    }

    /// The decoded frame that `loc` (a [`crate::codec::Codec::ZstdFrame`] member of
    /// `pack`) lies in; read and decoded on a miss (damaged frames are not cached).
    pub fn frame(&self, backend: &dyn Backend, pack: &PackId, loc: &Location) -> Result<Bytes> {
        self.cache.get_or_insert_with(&(*pack, loc.offset), || {
            let key = pack::pack_key(pack);
            let stored = backend.get(
                &key,
                Some(loc.offset..loc.offset + u64::from(loc.stored_len)),
            )?;
            let mut out = Vec::new();
            codec::decompress_frame(&stored, &mut out)
                .map_err(|e| e.context(format!("frame at {} in {key}", loc.offset)))?;
            Ok::<_, Error>(Bytes::from(out))
        })
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
