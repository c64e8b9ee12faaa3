//! The reference table of a frame some of whose members are stored XORed with a
//! similar block ([`super::codec::Codec::ZstdFrameXor`]): it comes before the frame's
//! zstd frame, in the stored bytes: a u16 count `n` (at least 1), then `n` entries of
//! a u16 skip (in [`FRAME_SKIP_UNIT`]s, strictly increasing) and the 32-byte id of the
//! reference of the member at that skip; all little-endian.

use super::pack::{FRAME_SKIP_UNIT, MAX_FRAME_SKIP};
use crate::error::{Error, Result};
use crate::id::{BlockId, Id};

/// Bytes of one reference table entry: a u16 skip and a 32-byte id.
pub const REF_ENTRY: usize = 34;

/// Append the reference table of `refs` (each member's skip in bytes and its
/// reference, in increasing skip order) to `out`. At most [`u16::MAX`] entries.
pub fn encode_refs(refs: &[(u32, BlockId)], out: &mut Vec<u8>) -> Result<()> {
    let bad = |m: &str| Error::new(crate::ErrorKind::InvalidInput, format!("references: {m}"));
    let n = u16::try_from(refs.len()).map_err(|_| bad("too many"))?;
    if n == 0 {
        return Err(bad("none"));
    }
    out.extend_from_slice(&n.to_le_bytes());
    let mut last: Option<u32> = None;
    for (skip, id) in refs {
        if !skip.is_multiple_of(FRAME_SKIP_UNIT) || *skip > MAX_FRAME_SKIP {
            return Err(bad("unaligned skip"));
        }
        if last.is_some_and(|l| l >= *skip) {
            return Err(bad("out of order"));
        }
        last = Some(*skip);
        out.extend_from_slice(&((skip / FRAME_SKIP_UNIT) as u16).to_le_bytes());
        out.extend_from_slice(&id.0);
    }
    Ok(())
}

/// The length of the reference table at the front of `head` (the first bytes of a
/// frame's stored range, at least 2), for a reader that fetches only the table.
pub fn refs_len(head: &[u8]) -> Result<usize> {
    let n = head
        .first_chunk::<2>()
        .map(|b| u16::from_le_bytes(*b))
        .ok_or_else(|| Error::corrupt("frame too short for its reference table"))?;
    if n == 0 {
        return Err(Error::corrupt("frame has an empty reference table"));
    }
    Ok(2 + usize::from(n) * REF_ENTRY)
}

/// A frame's reference table: each XOR member's skip in bytes and its reference.
pub type References = Vec<(u32, BlockId)>;

/// The reference table and the zstd frame of a frame's stored bytes that start with
/// one.
pub fn split_refs(stored: &[u8]) -> Result<(References, &[u8])> {
    let len = refs_len(stored)?;
    if stored.len() <= len {
        return Err(Error::corrupt(
            "frame too short for its reference table and data",
        ));
    }
    let (table, frame) = stored.split_at(len);
    let mut refs = Vec::with_capacity((len - 2) / REF_ENTRY);
    for e in table[2..].chunks_exact(REF_ENTRY) {
        let skip = u32::from(u16::from_le_bytes([e[0], e[1]])) * FRAME_SKIP_UNIT;
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[2..]);
        if refs.last().is_some_and(|(l, _)| *l >= skip) {
            return Err(Error::corrupt("frame reference table is out of order"));
        }
        refs.push((skip, Id(id)));
    }
    Ok((refs, frame))
}

/// The reference `refs` (a table as [`split_refs`] returns it, by skip) names for the
/// member at `skip`, if any.
pub fn reference_in(refs: &[(u32, BlockId)], skip: u32) -> Option<BlockId> {
    refs.binary_search_by_key(&skip, |(s, _)| *s)
        .ok()
        .map(|i| refs[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A reference table reads back as written, and the frame after it is found;
        /// a cut or unordered table is corrupt, never misread.
        #[test]
        fn reference_tables_round_trip(
            skips in proptest::collection::btree_set(0u32..64, 1..20),
            tail in proptest::collection::vec(any::<u8>(), 1..50),
            cut in any::<prop::sample::Index>(),
        ) {
            let refs: Vec<(u32, BlockId)> = skips
                .iter()
                .map(|s| (s * FRAME_SKIP_UNIT, Id::of(&s.to_le_bytes())))
                .collect();
            let mut stored = Vec::new();
            encode_refs(&refs, &mut stored).expect("encode");
            prop_assert_eq!(refs_len(&stored).expect("len"), stored.len());
            stored.extend_from_slice(&tail);
            let (back, frame) = split_refs(&stored).expect("split");
            prop_assert_eq!(&back, &refs);
            prop_assert_eq!(frame, &tail[..]);
            let table_len = stored.len() - tail.len();
            prop_assert!(split_refs(&stored[..cut.index(table_len + 1)]).is_err());
            if refs.len() > 1 {
                let mut swapped = refs.clone();
                swapped.swap(0, 1);
                prop_assert!(encode_refs(&swapped, &mut Vec::new()).is_err());
            }
        }
    }

    #[test]
    fn bad_reference_tables_are_refused() {
        let id = Id::of(b"r");
        assert!(encode_refs(&[], &mut Vec::new()).is_err());
        assert!(encode_refs(&[(100, id)], &mut Vec::new()).is_err());
        // A table whose count is zero, or whose skips repeat.
        assert!(split_refs(&[0, 0, 1, 2, 3]).is_err());
        let mut t = vec![2, 0];
        for _ in 0..2 {
            t.extend_from_slice(&[1, 0]);
            t.extend_from_slice(&id.0);
        }
        t.push(9);
        assert!(split_refs(&t).is_err());
    }
}
