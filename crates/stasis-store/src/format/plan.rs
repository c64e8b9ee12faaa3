//! gc plans: the blobs and packs a gc is about to remove, published before it removes
//! anything so that write sessions stop deduplicating against them.
//!
//! A [`raw::PlanHeader`], `dead_count` blob ids, `pack_count` pack ids (32 bytes each),
//! sealed by a blake3 of all of it (see [`super::seal`]). Named `gc/<blake3 of the
//! file>`.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::keys::plan_key;
use super::raw;
use crate::error::{Error, Result};
use crate::id::{BlockId, Id, PackId};

/// A published plan: the blobs about to be removed, and the packs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Blobs no snapshot referenced when the plan was made.
    pub dead: Vec<BlockId>,
    /// Packs to be deleted (removed, repacked or orphaned).
    pub packs: Vec<PackId>,
}

impl Plan {
    /// Encode; returns the object key and bytes.
    pub fn encode(&self) -> (String, Vec<u8>) {
        let header = raw::PlanHeader {
            magic: raw::PLAN_MAGIC,
            version: U32::new(raw::FORMAT_VERSION),
            reserved: [0; 4],
            dead_count: U64::new(self.dead.len() as u64),
            pack_count: U64::new(self.packs.len() as u64),
        };
        let mut buf = Vec::with_capacity(64 + 32 * (self.dead.len() + self.packs.len()));
        buf.extend_from_slice(header.as_bytes());
        for id in self.dead.iter().chain(&self.packs) {
            buf.extend_from_slice(&id.0);
        }
        super::seal(&mut buf);
        (plan_key(&Id::of(&buf)), buf)
    }

    /// Decode and check.
    pub fn decode(bytes: &[u8]) -> Result<Plan> {
        let body = super::unseal(bytes, size_of::<raw::PlanHeader>(), "gc plan")?;
        let (h, rest) = raw::PlanHeader::read_from_prefix(body)
            .map_err(|_| Error::corrupt("gc plan header is short"))?;
        if h.magic != raw::PLAN_MAGIC || h.version.get() != raw::FORMAT_VERSION {
            return Err(Error::corrupt("gc plan has a bad magic or version"));
        }
        let n = h
            .dead_count
            .get()
            .checked_add(h.pack_count.get())
            .and_then(|n| n.checked_mul(32));
        if n != Some(rest.len() as u64) {
            return Err(Error::corrupt("gc plan size does not match its header"));
        }
        let ids = super::ids(rest);
        // dead_count <= rest.len() / 32 was checked above.
        let (dead, packs) = ids.split_at(h.dead_count.get() as usize);
        Ok(Plan {
            dead: dead.to_vec(),
            packs: packs.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::keys::PLAN_PREFIX;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn plan_roundtrip(dead in 0usize..50, packs in 0usize..10) {
            let p = Plan {
                dead: (0..dead).map(|i| Id::of(&i.to_le_bytes())).collect(),
                packs: (0..packs).map(|i| Id::of(&[i as u8, 1])).collect(),
            };
            let (key, bytes) = p.encode();
            prop_assert!(key.starts_with(PLAN_PREFIX));
            prop_assert_eq!(Plan::decode(&bytes).expect("decode"), p);
        }

        #[test]
        fn plan_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Plan::decode(&bytes);
        }

        #[test]
        fn plan_flip_is_detected(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let p = Plan { dead: vec![Id::of(b"a")], packs: vec![Id::of(b"b")] };
            let (_, mut bytes) = p.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(Plan::decode(&bytes).is_err());
        }
    }
}
