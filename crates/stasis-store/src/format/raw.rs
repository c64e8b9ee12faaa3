//! Raw on-disk structs: fixed layouts, little-endian, sizes asserted at compile time.
//!
//! Nothing here is validated; [`crate::pack`] and [`crate::index`] turn these into
//! domain types and check every field.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// First bytes of a pack file.
pub const PACK_MAGIC: [u8; 8] = *b"STASPACK";
/// Last bytes of a pack file.
pub const PACK_END_MAGIC: [u8; 8] = *b"STASPEND";
/// First bytes of an index file.
pub const INDEX_MAGIC: [u8; 8] = *b"STASINDX";
/// Format version of packs and index files with plain tables (and of gc plans).
pub const FORMAT_VERSION: u32 = 1;
/// Format version of packs and index files whose tables are zstd-compressed: a pack's
/// entry table, and an index file's body after its header (pack ids, then entries in
/// pack order), are one zstd frame each; the checksums cover the stored bytes. Written
/// in repositories of version [`crate::format::config::DELTA_REPO_VERSION`] and later.
pub const COMPACT_FORMAT_VERSION: u32 = 2;
/// Format version of index files that also hold similarity features: as
/// [`COMPACT_FORMAT_VERSION`], and the compressed body holds, after the entries, one
/// little-endian u32 per entry, its block's feature ([`crate::similarity`]; 0 for
/// none). Written in repositories of version [`crate::format::config::SIMILAR_REPO_VERSION`]
/// and later; packs stay at [`COMPACT_FORMAT_VERSION`].
pub const FEATURES_FORMAT_VERSION: u32 = 3;

/// The largest table a compressed pack table or index body may decode to (a bound on
/// what a damaged header can make a reader allocate).
pub const MAX_TABLE_BYTES: usize = 1 << 30;

/// At offset 0 of a pack.
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PackHeader {
    pub magic: [u8; 8],
    pub version: U32,
    /// Random bytes: two packs never share a name, even with the same blobs in the same
    /// order (gc deletes packs by name while writers may be storing those blobs again).
    pub nonce: [u8; 16],
    pub reserved: [u8; 4],
}

/// One stored blob, in the entry table near a pack's end.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PackEntry {
    /// blake3 of the uncompressed bytes.
    pub id: [u8; 32],
    /// Where the stored bytes start in the pack.
    pub offset: U64,
    /// Stored (possibly compressed) length.
    pub stored_len: U32,
    /// Uncompressed length.
    pub raw_len: U32,
    /// [`crate::format::codec::Codec`] byte.
    pub codec: u8,
    /// [`crate::pack::BlobKind`] byte.
    pub kind: u8,
    /// For a blob in a shared frame ([`crate::format::codec::Codec::ZstdFrame`]): where its bytes
    /// start in the decoded frame, in 4 KiB units. Zero otherwise.
    pub frame_skip: U16,
    pub reserved: [u8; 4],
}

/// The last bytes of a pack: where its entry table is and a hash of it.
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PackTrailer {
    pub entries_offset: U64,
    pub entry_count: U32,
    pub version: U32,
    /// blake3 of the entry table.
    pub entries_hash: [u8; 32],
    pub reserved: [u8; 8],
    pub magic: [u8; 8],
}

/// First bytes of a gc plan.
pub const PLAN_MAGIC: [u8; 8] = *b"STASPLAN";

/// At offset 0 of a gc plan; followed by `dead_count` blob ids, `pack_count` pack ids
/// (32 bytes each) and a 32-byte blake3 of everything before it.
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PlanHeader {
    pub magic: [u8; 8],
    pub version: U32,
    pub reserved: [u8; 4],
    pub dead_count: U64,
    pub pack_count: U64,
}

/// At offset 0 of an index file; followed by `pack_count` pack ids (32 bytes each),
/// `entry_count` [`IndexEntry`]s, and a 32-byte blake3 of everything before it.
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct IndexHeader {
    pub magic: [u8; 8],
    pub version: U32,
    pub pack_count: U32,
    pub entry_count: U64,
    pub reserved: [u8; 8],
}

/// Where one blob lives: an entry of an index file.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct IndexEntry {
    pub id: [u8; 32],
    /// Position in the index file's pack table.
    pub pack: U32,
    pub stored_len: U32,
    pub offset: U64,
    pub raw_len: U32,
    pub codec: u8,
    pub kind: u8,
    /// As [`PackEntry::frame_skip`].
    pub frame_skip: U16,
}

const _: () = assert!(size_of::<PackHeader>() == 32);
const _: () = assert!(size_of::<PackEntry>() == 56);
const _: () = assert!(size_of::<PackTrailer>() == 64);
const _: () = assert!(size_of::<IndexHeader>() == 32);
const _: () = assert!(size_of::<IndexEntry>() == 56);
const _: () = assert!(size_of::<PlanHeader>() == 32);
