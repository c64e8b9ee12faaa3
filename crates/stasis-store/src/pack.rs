//! Packs: many stored blobs in one immutable, self-describing object.
//!
//! A pack is named by the blake3 of all its bytes, so `verify --read-data` checks every
//! byte; each blob is also checked against its own id whenever it is read. The entry
//! tables alone are enough to rebuild the index. The byte layout is
//! [`crate::format::pack`]'s; this module builds packs and reads their tables.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::codec::Codec;
use crate::format::keys::pack_key;
pub use crate::format::pack::{BlobKind, FRAME_SKIP_UNIT, FrameMember, MAX_FRAME_SKIP, PackEntry};
use crate::format::{self, pack as layout, raw};
use crate::id::{BlockId, Id, PackId};

/// Each entry's share of the stored bytes: its stored length, or for the members of a
/// shared frame an even part of the frame's (`entries` as a pack table lists them, so
/// a frame's members are next to each other).
pub fn stored_shares(entries: &[PackEntry]) -> Vec<u64> {
    let mut out = Vec::with_capacity(entries.len());
    for group in entries.chunk_by(PackEntry::same_frame) {
        let n = group.len() as u64;
        let total = u64::from(group[0].stored_len);
        for k in 0..n {
            // The first member carries the remainder.
            out.push(total / n + if k == 0 { total % n } else { 0 });
        }
    }
    out
}

/// Builds one pack. Its bytes may be taken out as it grows ([`PackBuilder::take`]),
/// so that a writer streams them to storage while blocks still arrive; then only the
/// end is left for [`PackBuilder::seal`].
#[derive(Debug)]
pub struct PackBuilder {
    /// The bytes not yet taken.
    buf: Vec<u8>,
    /// How many bytes were taken before `buf`.
    taken: u64,
    entries: Vec<PackEntry>,
    /// [`raw::FORMAT_VERSION`] or [`raw::COMPACT_FORMAT_VERSION`].
    version: u32,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Fresh random bytes for a pack header (the clock and a counter if the OS has none).
fn nonce() -> [u8; 16] {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..].copy_from_slice(&(n ^ u64::from(std::process::id())).to_le_bytes());
    }
    b
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::with_capacity(1 << 20)
    }

    /// An empty pack whose buffer holds `bytes` without growing (a pack is sealed just
    /// past its target size; growing by doubling would hold twice that in memory).
    pub fn with_capacity(bytes: usize) -> Self {
        Self::with_format(bytes, raw::FORMAT_VERSION)
    }

    /// An empty pack in format `version` built in `buf`, a buffer from an earlier pack
    /// (its bytes are dropped, its capacity kept).
    pub fn reusing(mut buf: Vec<u8>, version: u32) -> Self {
        buf.clear();
        buf.extend_from_slice(&layout::encode_header(version, nonce()));
        PackBuilder {
            buf,
            taken: 0,
            entries: Vec::new(),
            version,
        }
    }

    /// [`PackBuilder::with_capacity`], writing the pack in format `version`
    /// (`raw::COMPACT_FORMAT_VERSION` compresses the entry table).
    pub fn with_format(bytes: usize, version: u32) -> Self {
        Self::reusing(crate::buffer::with_capacity(bytes), version)
    }

    /// Append a blob (with its similarity `feature`, 0 for none); returns its entry.
    pub fn add(
        &mut self,
        id: BlockId,
        kind: BlobKind,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
        feature: u32,
    ) -> Result<PackEntry> {
        let stored_len = u32::try_from(stored.len())
            .map_err(|_| Error::new(crate::ErrorKind::InvalidInput, "blob larger than 4 GiB"))?;
        let e = PackEntry {
            id,
            kind,
            codec,
            offset: self.len(),
            stored_len,
            raw_len,
            skip: 0,
            feature,
        };
        if codec.in_frame() {
            return Err(Error::new(
                crate::ErrorKind::InvalidInput,
                "a frame member is added with its frame",
            ));
        }
        self.buf.extend_from_slice(stored);
        self.entries.push(e);
        Ok(e)
    }

    /// Append one zstd frame shared by `members` (in increasing `skip` order, each skip
    /// a multiple of `FRAME_SKIP_UNIT` up to `MAX_FRAME_SKIP`; all plain members, or
    /// all members of a frame with a reference table, which `stored` starts with).
    pub fn add_frame(
        &mut self,
        kind: BlobKind,
        members: &[FrameMember],
        stored: &[u8],
    ) -> Result<()> {
        let bad = |m: &str| Error::new(crate::ErrorKind::InvalidInput, format!("frame: {m}"));
        let stored_len = u32::try_from(stored.len()).map_err(|_| bad("larger than 4 GiB"))?;
        let mut next = 0u64;
        for m in members {
            if !m.skip.is_multiple_of(FRAME_SKIP_UNIT)
                || m.skip > MAX_FRAME_SKIP
                || u64::from(m.skip) < next
            {
                return Err(bad("members out of order or unaligned"));
            }
            next = u64::from(m.skip) + u64::from(m.raw_len).max(1);
        }
        if members.is_empty() {
            return Err(bad("no members"));
        }
        let plain = members.iter().all(|m| m.codec == Codec::ZstdFrame);
        let with_refs = members
            .iter()
            .all(|m| matches!(m.codec, Codec::ZstdFrameRefs | Codec::ZstdFrameXor));
        if !plain && !with_refs {
            return Err(bad("members of mixed or non-frame codecs"));
        }
        let offset = self.len();
        self.buf.extend_from_slice(stored);
        self.entries.extend(members.iter().map(|m| PackEntry {
            id: m.id,
            kind,
            codec: m.codec,
            offset,
            stored_len,
            raw_len: m.raw_len,
            skip: m.skip,
            feature: m.feature,
        }));
        Ok(())
    }

    /// Bytes written so far, taken or not.
    pub fn len(&self) -> u64 {
        self.taken + self.buf.len() as u64
    }

    /// Bytes written and not yet taken.
    pub fn untaken(&self) -> usize {
        self.buf.len()
    }

    /// No blob added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take the bytes written so far (to be stored in order, followed by whatever is
    /// taken later and by [`PackBuilder::seal`]'s bytes), and go on in `next`, a buffer
    /// whose bytes are dropped and capacity kept.
    pub fn take(&mut self, mut next: Vec<u8>) -> Vec<u8> {
        next.clear();
        let out = std::mem::replace(&mut self.buf, next);
        self.taken += out.len() as u64;
        out
    }

    /// Seal: append the entry table and trailer. Returns the bytes not yet taken (the
    /// pack's end) and the entries.
    pub fn seal(mut self) -> Result<(Vec<u8>, Vec<PackEntry>)> {
        let entries_offset = self.len();
        let mut table = layout::encode_table(&self.entries);
        if self.version == raw::COMPACT_FORMAT_VERSION {
            match format::compress_table(&table) {
                Some(c) => table = c,
                // Out of memory in zstd, say: the pack is written with a plain table,
                // which its header must then say, unless the header is already gone.
                None if self.taken == 0 => {
                    self.version = raw::FORMAT_VERSION;
                    layout::set_header_version(&mut self.buf, raw::FORMAT_VERSION);
                }
                None => {
                    return Err(Error::new(
                        crate::ErrorKind::Io,
                        "compressing a pack's entry table failed",
                    ));
                }
            }
        }
        let table_at = self.buf.len();
        self.buf.extend_from_slice(&table);
        let trailer = layout::encode_trailer(
            entries_offset,
            self.entries.len(),
            self.version,
            &self.buf[table_at..],
        );
        self.buf.extend_from_slice(&trailer);
        Ok((self.buf, self.entries))
    }

    /// Seal a pack none of whose bytes were taken. Returns the pack id, bytes and
    /// entries.
    pub fn finish(self) -> Result<(PackId, Vec<u8>, Vec<PackEntry>)> {
        if self.taken != 0 {
            return Err(Error::new(
                crate::ErrorKind::InvalidInput,
                "finish: part of the pack was taken; hash the parts instead",
            ));
        }
        let (bytes, entries) = self.seal()?;
        Ok((Id::of(&bytes), bytes, entries))
    }
}

/// Read and check a pack's entry table (reads only the table and trailer).
pub fn read_entries(backend: &dyn Backend, id: &PackId) -> Result<Vec<PackEntry>> {
    let key = pack_key(id);
    crate::backend::read_again_if_damaged(backend, &key, || read_entries_once(backend, &key))
}

fn read_entries_once(backend: &dyn Backend, key: &str) -> Result<Vec<PackEntry>> {
    let key = key.to_string();
    let size = backend.size(&key)?;
    let (hsize, tsize) = (layout::HEADER_LEN, layout::TRAILER_LEN);
    if size < hsize + tsize {
        return Err(Error::corrupt(format!(
            "pack {key} is truncated ({size} bytes)"
        )));
    }
    let version = layout::decode_header(&backend.get(&key, Some(0..hsize))?, &key)?;
    let tail = backend.get(&key, Some(size - tsize..size))?;
    let at = layout::decode_trailer(&tail, size, version, &key)?;
    let stored = backend.get(&key, Some(at.start..at.end))?;
    layout::decode_table(&stored, &at, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::format::pack::entry_from_raw;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn build_and_read(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..500), 0..20), compact in any::<bool>()) {
            let version = if compact { raw::COMPACT_FORMAT_VERSION } else { raw::FORMAT_VERSION };
            let mut b = PackBuilder::with_format(1 << 20, version);
            for (i, blob) in blobs.iter().enumerate() {
                let kind = if i % 3 == 0 { BlobKind::Tree } else { BlobKind::Data };
                b.add(Id::of(blob), kind, Codec::Raw, blob.len() as u32, blob, 0).expect("add");
            }
            let (id, bytes, entries) = b.finish().expect("finish");
            prop_assert_eq!(id, Id::of(&bytes));
            let be = MemoryBackend::new();
            be.put(&pack_key(&id), &bytes).expect("put");
            let read = read_entries(&be, &id).expect("read");
            prop_assert_eq!(&read, &entries);
            for (e, blob) in read.iter().zip(&blobs) {
                let s = e.offset as usize;
                prop_assert_eq!(&bytes[s..s + e.stored_len as usize], &blob[..]);
            }
        }

        #[test]
        fn lengths_past_the_largest_block_are_corrupt(extra in 1u32..1 << 20) {
            let len = crate::format::config::MAX_BLOCK_SIZE + extra;
            prop_assert!(entry_from_raw([1; 32], 0, 1, 32, 10, len, 0).is_err());
            prop_assert!(entry_from_raw([1; 32], 0, 1, 32, 10, len - extra, 0).is_ok());
        }

        #[test]
        fn damaged_table_is_detected(pos_frac in 0.0f64..1.0, flip in 1u8..=255, compact in any::<bool>()) {
            let version = if compact { raw::COMPACT_FORMAT_VERSION } else { raw::FORMAT_VERSION };
            let mut b = PackBuilder::with_format(1 << 20, version);
            for i in 0..5u8 {
                let blob = vec![i; 100];
                b.add(Id::of(&blob), BlobKind::Data, Codec::Raw, 100, &blob, 0).expect("add");
            }
            let (id, mut bytes, _) = b.finish().expect("finish");
            // Damage something in the header, table or trailer.
            let table_start = 32 + 500;
            let candidates: Vec<usize> = (0..32).chain(table_start..bytes.len()).collect();
            let pos = candidates[((candidates.len() - 1) as f64 * pos_frac) as usize];
            bytes[pos] ^= flip;
            let be = MemoryBackend::new();
            be.put(&pack_key(&id), &bytes).expect("put");
            let r = read_entries(&be, &id);
            // Reserved bytes are not checked by the table reader; everything else is.
            let in_reserved = (12..32).contains(&pos) || (bytes.len() - 16..bytes.len() - 8).contains(&pos);
            if !in_reserved {
                prop_assert!(r.is_err(), "flip at {} undetected", pos);
            }
        }
    }

    proptest! {
        #[test]
        fn frames_build_read_and_share(groups in proptest::collection::vec(1usize..6, 1..8)) {
            let mut b = PackBuilder::new();
            let mut n = 0u32;
            for g in &groups {
                let members: Vec<FrameMember> = (0..*g as u32)
                    .map(|k| { n += 1; FrameMember::plain(Id::of(&n.to_le_bytes()), 4096, k * 4096) })
                    .collect();
                if *g == 1 {
                    b.add(members[0].id, BlobKind::Data, Codec::Raw, 3, b"abc", 0).expect("add");
                } else {
                    b.add_frame(BlobKind::Data, &members, &[7u8; 100]).expect("frame");
                }
            }
            let (id, bytes, entries) = b.finish().expect("finish");
            let be = MemoryBackend::new();
            be.put(&pack_key(&id), &bytes).expect("put");
            let read = read_entries(&be, &id).expect("read");
            prop_assert_eq!(&read, &entries);
            let shares = stored_shares(&read);
            let want: u64 = groups.iter().map(|g| if *g == 1 { 3 } else { 100 }).sum();
            prop_assert_eq!(shares.iter().sum::<u64>(), want);
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let m = |k: u32, skip: u32| FrameMember::plain(Id::of(&k.to_le_bytes()), 4096, skip);
        let mut b = PackBuilder::new();
        // Unaligned, overlapping or empty frames never get written.
        assert!(
            b.add_frame(BlobKind::Data, &[m(1, 0), m(2, 100)], b"x")
                .is_err()
        );
        assert!(
            b.add_frame(BlobKind::Data, &[m(1, 0), m(2, 0)], b"x")
                .is_err()
        );
        assert!(b.add_frame(BlobKind::Data, &[], b"x").is_err());
        let xor = FrameMember {
            codec: Codec::ZstdFrameXor,
            ..m(2, 4096)
        };
        assert!(b.add_frame(BlobKind::Data, &[m(1, 0), xor], b"x").is_err());
        // A table whose frame members go backwards is corrupt.
        b.add_frame(BlobKind::Data, &[m(1, 0), m(2, 8192)], b"xyz")
            .expect("frame");
        b.entries.swap(0, 1);
        let (id, bytes, _) = b.finish().expect("finish");
        let be = MemoryBackend::new();
        be.put(&pack_key(&id), &bytes).expect("put");
        assert!(read_entries(&be, &id).is_err());
    }

    #[test]
    fn truncated_pack_is_corrupt() {
        let mut b = PackBuilder::new();
        b.add(Id::of(b"abc"), BlobKind::Data, Codec::Raw, 3, b"abc", 0)
            .expect("add");
        let (id, bytes, _) = b.finish().expect("finish");
        let be = MemoryBackend::new();
        for cut in [0, 10, 40, bytes.len() - 1] {
            be.put(&pack_key(&id), &bytes[..cut]).expect("put");
            assert!(read_entries(&be, &id).is_err(), "cut at {cut}");
        }
    }
}
