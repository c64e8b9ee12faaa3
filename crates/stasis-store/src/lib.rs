//! # stasis-store
//!
//! A content-addressed block store for VM disk and memory payloads.
//!
//! Data flows one way: an input file is read by `source` (data regions only), cut into
//! fixed-size blocks and stored by `ingest` (blake3 ids, zero blocks never stored; the
//! ingest *policy* decides what each block becomes: a duplicate, a delta against the
//! parent's block, an XOR member of a shared frame, or new data; the *writer* encodes
//! and frames the new ones) into pack files through a [`Writer`]; the index says where
//! each block lives; a [`Manifest`] (a Merkle tree of block references) describes each
//! payload; the catalog (another crate) records manifests. All storage goes through one
//! [`Backend`] trait, and every stored byte layout is in one private area, `format`.
//!
//! ## The surface
//! Modules are private; what a user of the crate needs is re-exported here: open a
//! [`Store`] on a [`Backend`], write payloads with [`ingest_full`] / [`ingest_diff`]
//! through a [`Writer`], read them with a [`PayloadReader`], and maintain the store with
//! [`collect_garbage`], [`verify_store`] and [`rebuild_index`]. The parsers of the
//! stored formats are reachable only for the fuzz targets, behind the `fuzzing`
//! feature.
//!
//! ## Formats
//! Every layout below is in the private `format` module (one file per format, raw
//! `#[repr(C)]` structs in `format/raw.rs` turned into validated types); object keys
//! are in `format/keys.rs`.
//! - `config`: JSON [`StoreConfig`].
//! - `packs/<2 hex>/<blake3 of the pack>.pack`: header, blobs, entry table, trailer.
//! - `index/<blake3 of the file>`: which pack holds each blob; sealed (a blake3 of the
//!   whole file ends it).
//! - `gc/<blake3>`: a gc plan in progress (the blobs and packs it will remove); sealed.
//! - `quarantine/<pack>.pack`: packs whose entry table was unreadable, moved aside by
//!   repair.
//! - `.locks/`: lock files of the local backend (not objects; see `lock`).
//! - Tree nodes: postcard `NodeRecord`s stored as blobs of kind `Tree`.
//! - Delta blocks ([`Codec::ZstdDelta`]): a block stored as the 32-byte id of
//!   its *base*, then a zstd frame made with the base's bytes as raw-content prefix.
//!   [`ingest_full`] writes one where a block replaces a different block at the
//!   same place in the parent payload and the delta is at most half the block
//!   compressed alone (the CLI asks for this on memory payloads). A base is always a
//!   whole block: committed, not in a gc plan, and never a delta itself (when the
//!   parent's block is a delta, its base is used), so a read decodes at most two
//!   blocks and chains or cycles cannot form; a delta naming a delta is corrupt.
//! - XOR members ([`Codec::ZstdFrameXor`], repository version 3): a memory page
//!   stored, inside its shared frame, as its XOR with a similar stored page, its
//!   *reference*, found through a 32-bit similarity feature (`similarity`) that index
//!   files keep for every whole memory block (index format version 3; pack
//!   tables do not, so repair takes them from the intact old index files: hints,
//!   lost only with a damaged one). Such a frame's stored bytes start
//!   with a reference table (`format/refs.rs`); all its members say so in their codec. A
//!   reference obeys the rules of a delta's base: committed, not in a gc plan, whole.
//!
//! ## Write and fsync order
//! See [`Writer`]: packs (streamed to a temporary object as they fill, each fdatasynced
//! before it is renamed to the hash of its bytes), then the index file, then
//! one directory sync; only after that does the catalog record the snapshot. Nothing
//! stored is modified in place, so a crash at any point leaves every committed
//! snapshot readable and the interrupted one absent.
//!
//! ## gc, repair and locking
//! [`collect_garbage`] removes what no snapshot references while creates and mounts keep running:
//! it publishes a plan (`gc/<blake3>`) of the blocks it will remove, waits for the
//! write sessions registered before it (`lock`), marks again, and only then deletes;
//! sessions registered later never deduplicate against planned blocks, nor take one
//! as a delta's base or a reference. Marking keeps the base of every live delta and
//! the reference of every live XOR member. [`rebuild_index`]
//! rebuilds the index from the packs. Both hold the exclusive maintenance lock. Local
//! locks are `flock`s (released by the kernel when a holder dies). Packs carry a random
//! nonce, so a pack written again can never take the name of one gc is deleting.
//!
//! ## Reads
//! Every block read from storage is checked against its id; corrupt bytes are an error
//! ([`ErrorKind::Corrupt`]), never returned. Decoded blocks are shared through one
//! bounded cache per [`Store`], and decoded shared frames through another
//! (`frame::FrameCache`), so a sequential reader decodes each frame once.

mod backend;
mod buffer;
mod error;
mod format;
mod frame;
mod gc;
mod id;
mod index;
mod ingest;
mod lock;
mod manifest;
mod pack;
mod plans;
mod reader;
mod repair;
mod similarity;
mod source;
mod store;
mod verify;

pub use backend::{
    Backend, Buffered, Bytes, CrashBackend, LocalBackend, MemoryBackend, ObjectMeta, PartialObject,
    check_key, check_prefix, slice_range,
};
pub use error::{Error, ErrorKind, Result};
pub use format::codec::{
    Algorithm, Codec, Compression, MAX_FRAME_BYTES, compress, compress_delta, decompress,
};
pub use format::config::{
    MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, REPO_VERSION, Role, StoreConfig, check_block_size, random_hex,
};
pub use format::keys::pack_key;
pub use format::pack::BlobKind;
pub use gc::{GcOptions, GcReport, Phase, collect as collect_garbage};
pub use id::{BlockId, Id, PackId};
pub use index::{Index, Location};
pub use ingest::{
    FullOptions, IngestStats, LayerSource, Progress, ingest_diff, ingest_full, ingest_full_with,
    ingest_layer,
};
pub use lock::{FileLocks, Guard, Held, Locks, MemoryLocks};
pub use manifest::{BlockRef, Manifest, TreeBuilder, apply_changes, visit_blocks};
pub use pack::{PackBuilder, read_entries};
pub use reader::{PayloadReader, RestoreStats};
pub use repair::{RepairReport, rebuild_index};
pub use source::{Input, data_regions, is_zero, open_input};
pub use store::{Committed, Space, Store, WriteStats, Writer};
pub use verify::{
    BadBlocks, Problem, StoreReport, new_stored_bytes, verify_manifest, verify_store,
};

/// The stored formats' parsers, for the fuzz targets (`fuzz/`) only: not a stable API.
/// Checks for code outside this crate that implements its traits (the `testing`
/// feature): the behaviour every [`Backend`] must have.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::backend::conformance::conformance as backend_conformance;
    pub use crate::lock::conformance::conformance as locks_conformance;
}

#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::format::codec::{
        decompress_delta, decompress_frame, decompress_into, split_delta,
    };
    pub use crate::format::index_file::decode_file;
    pub use crate::format::node::decode_node;
    pub use crate::format::plan::Plan;
    pub use crate::format::refs::split_refs;
}
