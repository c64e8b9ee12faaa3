//! Pack files: many stored blobs in one immutable, self-describing object.
//!
//! Layout: a [`raw::PackHeader`], the stored blobs back to back, a table of
//! [`raw::PackEntry`] (one per blob), and a [`raw::PackTrailer`] that points at the
//! table and carries its blake3. A pack is named by the blake3 of all its bytes, so
//! `verify --read-data` checks every byte; each blob is also checked against its own id
//! whenever it is read. The entry tables alone are enough to rebuild the index.
//!
//! Stored ranges never overlap, except that the members of one shared frame
//! ([`Codec::in_frame`], see [`crate::frame`]) are listed one after another with the
//! same range, each with a larger skip than the one before (in 4 KiB units in the
//! entry's `frame_skip`).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::backend::Backend;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::id::{BlockId, Id, PackId};
use crate::raw;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// Payload bytes.
    Data = 0,
    /// A manifest tree node.
    Tree = 1,
}

impl BlobKind {
    /// The kind named by an on-disk byte.
    pub fn from_u8(b: u8) -> Result<BlobKind> {
        match b {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            _ => Err(Error::corrupt(format!("unknown blob kind {b}"))),
        }
    }
}

/// A validated pack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// Content id (hash of the uncompressed bytes).
    pub id: BlockId,
    /// Data or tree.
    pub kind: BlobKind,
    /// How the stored bytes are encoded.
    pub codec: Codec,
    /// Offset of the stored bytes in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// For a member of a shared frame ([`Codec::in_frame`]): where its bytes start in
    /// the decoded frame (a multiple of [`FRAME_SKIP_UNIT`]). Zero otherwise.
    pub skip: u32,
    /// The block's similarity feature ([`crate::similarity::feature`]), 0 for none. A
    /// hint kept in index files only (from [`crate::raw::FEATURES_FORMAT_VERSION`]):
    /// pack tables do not hold it, so an entry read from a pack has none.
    pub feature: u32,
}

/// Frame members start at multiples of this many bytes in their decoded frame (every
/// block size is one), so the on-disk skip fits in 16 bits.
pub const FRAME_SKIP_UNIT: u32 = 4096;

/// The largest skip a frame member can have.
pub const MAX_FRAME_SKIP: u32 = u16::MAX as u32 * FRAME_SKIP_UNIT;

/// One blob of a frame being added: its id, length, where it starts in the frame, and
/// its codec: [`Codec::ZstdFrame`] for every member of a plain frame,
/// [`Codec::ZstdFrameRefs`] or [`Codec::ZstdFrameXor`] for every member of one with a
/// reference table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMember {
    /// Content id.
    pub id: BlockId,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Offset in the decoded frame.
    pub skip: u32,
    /// How the member is stored in the frame.
    pub codec: Codec,
    /// Similarity feature, 0 for none (see [`PackEntry::feature`]).
    pub feature: u32,
}

impl FrameMember {
    /// A member of a plain frame, without a feature.
    pub fn plain(id: BlockId, raw_len: u32, skip: u32) -> FrameMember {
        FrameMember {
            id,
            raw_len,
            skip,
            codec: Codec::ZstdFrame,
            feature: 0,
        }
    }
}

impl PackEntry {
    /// Whether `self` and `other` are members of the same shared frame.
    pub fn same_frame(&self, other: &PackEntry) -> bool {
        self.codec.in_frame()
            && other.codec.in_frame()
            && self.offset == other.offset
            && self.stored_len == other.stored_len
    }
}

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

/// The object key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{hex}.pack", &hex[..2])
}

/// The pack id in a pack key, if it is one.
pub fn pack_id_of_key(key: &str) -> Option<PackId> {
    let name = key
        .strip_prefix("packs/")?
        .split_once('/')?
        .1
        .strip_suffix(".pack")?;
    name.parse().ok()
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
        let header = raw::PackHeader {
            magic: raw::PACK_MAGIC,
            version: U32::new(version),
            nonce: nonce(),
            reserved: [0; 4],
        };
        buf.extend_from_slice(header.as_bytes());
        PackBuilder {
            buf,
            taken: 0,
            entries: Vec::new(),
            version,
        }
    }

    /// [`PackBuilder::with_capacity`], writing the pack in format `version`
    /// ([`raw::COMPACT_FORMAT_VERSION`] compresses the entry table).
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
    /// a multiple of [`FRAME_SKIP_UNIT`] up to [`MAX_FRAME_SKIP`]; all plain members, or
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
        let mut table: Vec<u8> = Vec::with_capacity(self.entries.len() * 56);
        for e in &self.entries {
            let r = raw::PackEntry {
                id: e.id.0,
                offset: U64::new(e.offset),
                stored_len: U32::new(e.stored_len),
                raw_len: U32::new(e.raw_len),
                codec: e.codec as u8,
                kind: e.kind as u8,
                frame_skip: U16::new((e.skip / FRAME_SKIP_UNIT) as u16),
                reserved: [0; 4],
            };
            table.extend_from_slice(r.as_bytes());
        }
        if self.version == raw::COMPACT_FORMAT_VERSION {
            match compress_table(&table) {
                Some(c) => table = c,
                // Out of memory in zstd, say: the pack is written with a plain table,
                // which its header must then say, unless the header is already gone.
                None if self.taken == 0 => {
                    self.version = raw::FORMAT_VERSION;
                    self.buf[8..12].copy_from_slice(&raw::FORMAT_VERSION.to_le_bytes());
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
        let entries_hash = *blake3::hash(&self.buf[table_at..]).as_bytes();
        let count = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        let trailer = raw::PackTrailer {
            entries_offset: U64::new(entries_offset),
            entry_count: U32::new(count),
            version: U32::new(self.version),
            entries_hash,
            reserved: [0; 8],
            magic: raw::PACK_END_MAGIC,
        };
        self.buf.extend_from_slice(trailer.as_bytes());
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

/// A table of fixed records as one zstd frame (level 3: tables are small, and their
/// ids are random, so higher levels find nothing more).
pub(crate) fn compress_table(table: &[u8]) -> Option<Vec<u8>> {
    zstd::bulk::compress(table, 3).ok()
}

/// Decode a compressed table that must come to exactly `len` bytes.
pub(crate) fn decompress_table(stored: &[u8], len: usize, what: &str) -> Result<Vec<u8>> {
    if len > raw::MAX_TABLE_BYTES {
        return Err(Error::corrupt(format!(
            "{what}: table of {len} bytes is too large"
        )));
    }
    let mut out = Vec::new();
    crate::codec::decompress(Codec::Zstd, stored, len, &mut out)
        .map_err(|e| e.context(what.to_string()))?;
    Ok(out)
}

/// A validated entry from its on-disk fields (shared by pack tables and index files).
pub(crate) fn entry_from_raw(
    id: [u8; 32],
    kind: u8,
    codec: u8,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    frame_skip: u16,
) -> Result<PackEntry> {
    let codec = Codec::from_u8(codec)?;
    // Every blob is a block (at most the largest block size) or a tree node (smaller):
    // a larger length is damage, and would have a reader reserve up to 4 GiB for it.
    if raw_len > crate::config::MAX_BLOCK_SIZE {
        return Err(Error::corrupt(format!(
            "blob {} claims {raw_len} bytes, more than any block",
            Id(id)
        )));
    }
    let skip = u32::from(frame_skip) * FRAME_SKIP_UNIT;
    if skip != 0 && !codec.in_frame() {
        return Err(Error::corrupt(format!(
            "blob {} has a frame offset but is not in a frame",
            Id(id)
        )));
    }
    Ok(PackEntry {
        id: Id(id),
        kind: BlobKind::from_u8(kind)?,
        codec,
        offset,
        stored_len,
        raw_len,
        skip,
        feature: 0,
    })
}

/// Read and check a pack's entry table (reads only the table and trailer).
pub fn read_entries(backend: &dyn Backend, id: &PackId) -> Result<Vec<PackEntry>> {
    let key = pack_key(id);
    let size = backend.size(&key)?;
    let tsize = size_of::<raw::PackTrailer>() as u64;
    let hsize = size_of::<raw::PackHeader>() as u64;
    if size < hsize + tsize {
        return Err(Error::corrupt(format!(
            "pack {key} is truncated ({size} bytes)"
        )));
    }
    let head = backend.get(&key, Some(0..hsize))?;
    let header = raw::PackHeader::read_from_bytes(&head[..])
        .map_err(|_| Error::corrupt(format!("pack {key}: short header")))?;
    let version = header.version.get();
    let known = [raw::FORMAT_VERSION, raw::COMPACT_FORMAT_VERSION];
    if header.magic != raw::PACK_MAGIC || !known.contains(&version) {
        return Err(Error::corrupt(format!(
            "pack {key}: bad header magic or version"
        )));
    }
    let tail = backend.get(&key, Some(size - tsize..size))?;
    let trailer = raw::PackTrailer::read_from_bytes(&tail[..])
        .map_err(|_| Error::corrupt(format!("pack {key}: short trailer")))?;
    if trailer.magic != raw::PACK_END_MAGIC || trailer.version.get() != version {
        return Err(Error::corrupt(format!(
            "pack {key}: bad trailer (truncated or not a pack)"
        )));
    }
    let start = trailer.entries_offset.get();
    let count = u64::from(trailer.entry_count.get());
    let esize = size_of::<raw::PackEntry>() as u64;
    let fits = match version {
        raw::FORMAT_VERSION => start.checked_add(count * esize) == Some(size - tsize),
        _ => start < size - tsize,
    };
    if start < hsize || !fits {
        return Err(Error::corrupt(format!(
            "pack {key}: entry table does not fit"
        )));
    }
    let stored = backend.get(&key, Some(start..size - tsize))?;
    if blake3::hash(&stored).as_bytes() != &trailer.entries_hash {
        return Err(Error::corrupt(format!(
            "pack {key}: entry table checksum mismatch"
        )));
    }
    let table: Vec<u8>;
    let table: &[u8] = if version == raw::FORMAT_VERSION {
        &stored
    } else {
        let len = usize::try_from(count * esize).unwrap_or(usize::MAX);
        table = decompress_table(&stored, len, &format!("pack {key}: entry table"))?;
        &table
    };
    let raws = <[raw::PackEntry]>::ref_from_bytes(table)
        .map_err(|_| Error::corrupt(format!("pack {key}: entry table misaligned")))?;
    let mut out: Vec<PackEntry> = Vec::with_capacity(raws.len());
    let mut prev_end = hsize;
    for r in raws {
        let e = entry_from_raw(
            r.id,
            r.kind,
            r.codec,
            r.offset.get(),
            r.stored_len.get(),
            r.raw_len.get(),
            r.frame_skip.get(),
        )?;
        // Blobs lie back to back; only the members of one frame share their bytes, each
        // starting past the one before it.
        let in_prev_frame = out.last().is_some_and(|p: &PackEntry| {
            p.same_frame(&e) && u64::from(e.skip) >= u64::from(p.skip) + u64::from(p.raw_len)
        });
        let end = e.offset.checked_add(u64::from(e.stored_len));
        if (e.offset < prev_end && !in_prev_frame) || end.is_none_or(|end| end > start) {
            return Err(Error::corrupt(format!(
                "pack {key}: entry {} out of bounds",
                e.id
            )));
        }
        prev_end = end.unwrap_or(start);
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
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
            let len = crate::config::MAX_BLOCK_SIZE + extra;
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
    fn keys_roundtrip() {
        let id = Id::of(b"x");
        assert_eq!(pack_id_of_key(&pack_key(&id)), Some(id));
        assert_eq!(pack_id_of_key("index/abc"), None);
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
