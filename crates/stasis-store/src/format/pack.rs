//! A pack's bytes: a [`raw::PackHeader`], the stored blobs back to back, a table of
//! [`raw::PackEntry`] (one per blob), and a [`raw::PackTrailer`] that points at the
//! table and carries its blake3.
//!
//! Table formats: [`raw::FORMAT_VERSION`] stores the entries plain;
//! [`raw::COMPACT_FORMAT_VERSION`] stores them as one zstd frame, and the trailer's
//! checksum covers the stored bytes. Stored ranges never overlap, except that the
//! members of one shared frame ([`Codec::in_frame`]) are listed one after another with
//! the same range, each with a larger skip than the one before (in
//! [`FRAME_SKIP_UNIT`]s in the entry's `frame_skip`).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::codec::Codec;
use super::raw;
use crate::error::{Error, Result};
use crate::id::{BlockId, Id};

/// Bytes of a pack's header.
pub(crate) const HEADER_LEN: u64 = size_of::<raw::PackHeader>() as u64;
/// Bytes of a pack's trailer.
pub(crate) const TRAILER_LEN: u64 = size_of::<raw::PackTrailer>() as u64;
/// Bytes of one plain entry.
const ENTRY_LEN: u64 = size_of::<raw::PackEntry>() as u64;

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
    /// The block's similarity feature (`similarity::feature`), 0 for none. A
    /// hint kept in index files only (from [`raw::FEATURES_FORMAT_VERSION`]):
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
    if raw_len > super::MAX_BLOCK_SIZE {
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

/// The header of a pack in format `version`, with a fresh `nonce`.
pub(crate) fn encode_header(version: u32, nonce: [u8; 16]) -> [u8; HEADER_LEN as usize] {
    let header = raw::PackHeader {
        magic: raw::PACK_MAGIC,
        version: U32::new(version),
        nonce,
        reserved: [0; 4],
    };
    let mut out = [0u8; HEADER_LEN as usize];
    out.copy_from_slice(header.as_bytes());
    out
}

/// The plain entry table of `entries`.
pub(crate) fn encode_table(entries: &[PackEntry]) -> Vec<u8> {
    let mut table: Vec<u8> = Vec::with_capacity(entries.len() * ENTRY_LEN as usize);
    for e in entries {
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
    table
}

/// The trailer of a pack in format `version` whose table of `count` entries starts at
/// `entries_offset` and is stored as `stored_table`.
pub(crate) fn encode_trailer(
    entries_offset: u64,
    count: usize,
    version: u32,
    stored_table: &[u8],
) -> [u8; TRAILER_LEN as usize] {
    let trailer = raw::PackTrailer {
        entries_offset: U64::new(entries_offset),
        entry_count: U32::new(u32::try_from(count).unwrap_or(u32::MAX)),
        version: U32::new(version),
        entries_hash: super::checksum(stored_table),
        reserved: [0; 8],
        magic: raw::PACK_END_MAGIC,
    };
    let mut out = [0u8; TRAILER_LEN as usize];
    out.copy_from_slice(trailer.as_bytes());
    out
}

/// The format version in a pack's header (`key` names the pack in errors).
pub(crate) fn decode_header(head: &[u8], key: &str) -> Result<u32> {
    let header = raw::PackHeader::read_from_bytes(head)
        .map_err(|_| Error::corrupt(format!("pack {key}: short header")))?;
    let version = header.version.get();
    let known = [raw::FORMAT_VERSION, raw::COMPACT_FORMAT_VERSION];
    if header.magic != raw::PACK_MAGIC || !known.contains(&version) {
        return Err(Error::corrupt(format!(
            "pack {key}: bad header magic or version"
        )));
    }
    Ok(version)
}

/// Rewrite the format version in the header at the front of `pack`.
pub(crate) fn set_header_version(pack: &mut [u8], version: u32) {
    if let Ok((h, _)) = raw::PackHeader::mut_from_prefix(pack) {
        h.version = U32::new(version);
    }
}

/// Where a pack's entry table is, from its trailer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableAt {
    /// First byte of the stored table.
    pub start: u64,
    /// Past its last byte (where the trailer starts).
    pub end: u64,
    count: u64,
    version: u32,
    hash: [u8; 32],
}

/// Read a pack's trailer (`tail`, its last [`TRAILER_LEN`] bytes) for a pack of `size`
/// bytes whose header said `version`, and check that the table it points at fits.
pub(crate) fn decode_trailer(tail: &[u8], size: u64, version: u32, key: &str) -> Result<TableAt> {
    let trailer = raw::PackTrailer::read_from_bytes(tail)
        .map_err(|_| Error::corrupt(format!("pack {key}: short trailer")))?;
    if trailer.magic != raw::PACK_END_MAGIC || trailer.version.get() != version {
        return Err(Error::corrupt(format!(
            "pack {key}: bad trailer (truncated or not a pack)"
        )));
    }
    let start = trailer.entries_offset.get();
    let count = u64::from(trailer.entry_count.get());
    let end = size.saturating_sub(TRAILER_LEN);
    let fits = match version {
        raw::FORMAT_VERSION => start.checked_add(count * ENTRY_LEN) == Some(end),
        _ => start < end,
    };
    if start < HEADER_LEN || !fits {
        return Err(Error::corrupt(format!(
            "pack {key}: entry table does not fit"
        )));
    }
    Ok(TableAt {
        start,
        end,
        count,
        version,
        hash: trailer.entries_hash,
    })
}

/// Check and decode the stored entry table `stored` found at `at`: every entry valid,
/// blobs back to back between the header and the table.
pub(crate) fn decode_table(stored: &[u8], at: &TableAt, key: &str) -> Result<Vec<PackEntry>> {
    if !super::checksum_matches(stored, &at.hash) {
        return Err(Error::corrupt(format!(
            "pack {key}: entry table checksum mismatch"
        )));
    }
    let table: Vec<u8>;
    let table: &[u8] = if at.version == raw::FORMAT_VERSION {
        stored
    } else {
        let len = usize::try_from(at.count * ENTRY_LEN).unwrap_or(usize::MAX);
        table = super::decompress_table(stored, len, &format!("pack {key}: entry table"))?;
        &table
    };
    let raws = <[raw::PackEntry]>::ref_from_bytes(table)
        .map_err(|_| Error::corrupt(format!("pack {key}: entry table misaligned")))?;
    let mut out: Vec<PackEntry> = Vec::with_capacity(raws.len());
    let mut prev_end = HEADER_LEN;
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
        if (e.offset < prev_end && !in_prev_frame) || end.is_none_or(|end| end > at.start) {
            return Err(Error::corrupt(format!(
                "pack {key}: entry {} out of bounds",
                e.id
            )));
        }
        prev_end = end.unwrap_or(at.start);
        out.push(e);
    }
    Ok(out)
}

/// A made-up entry for tests: `seed` picks its id, kind, stored length and feature.
#[cfg(test)]
pub(crate) fn sample_entry(seed: u8, off: u64) -> PackEntry {
    PackEntry {
        id: Id::of(&[seed]),
        kind: if seed.is_multiple_of(2) {
            BlobKind::Data
        } else {
            BlobKind::Tree
        },
        codec: Codec::Zstd,
        offset: off,
        stored_len: 10 + u32::from(seed),
        raw_len: 100,
        skip: 0,
        feature: if seed.is_multiple_of(3) {
            0
        } else {
            u32::from(seed) * 0x0101_0101
        },
    }
}
