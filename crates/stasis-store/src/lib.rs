//! # stasis-store
//!
//! A content-addressed block store for VM disk and memory payloads.
//!
//! Data flows one way: an input file is read by [`source`] (data regions only), cut into
//! fixed-size blocks and stored by [`ingest`] (blake3 ids, zero blocks never stored,
//! compression by [`codec`], the new blocks of a batch grouped into shared zstd frames
//! by [`frame`]) into [`pack`] files through a [`store::Writer`];
//! the [`index`] says where each block lives; a [`manifest`] (a Merkle tree of block
//! references) describes each payload; the catalog (another crate) records manifests.
//! All storage goes through one [`backend::Backend`] trait.
//!
//! ## Formats
//! - `config`: JSON [`config::StoreConfig`].
//! - `packs/<2 hex>/<blake3 of the pack>.pack`: header, blobs, entry table, trailer
//!   (see [`pack`] and [`raw`]).
//! - `index/<blake3 of the file>`: which pack holds each blob (see [`index`]).
//! - `gc/<blake3>`: a gc plan in progress (see [`gc::Plan`]).
//! - `quarantine/<pack>.pack`: packs whose entry table was unreadable, moved aside by
//!   repair.
//! - `.locks/`: lock files of the local backend (not objects; see [`lock`]).
//! - Tree nodes: postcard [`manifest::NodeRecord`]s stored as blobs of kind `Tree`.
//! - Delta blocks ([`codec::Codec::ZstdDelta`]): a block stored as the 32-byte id of
//!   its *base*, then a zstd frame made with the base's bytes as raw-content prefix.
//!   [`ingest::ingest_full`] writes one where a block replaces a different block at the
//!   same place in the parent payload and the delta is at most half the block
//!   compressed alone (the CLI asks for this on memory payloads). A base is always a
//!   whole block: committed, not in a gc plan, and never a delta itself (when the
//!   parent's block is a delta, its base is used), so a read decodes at most two
//!   blocks and chains or cycles cannot form; a delta naming a delta is corrupt.
//! - XOR members ([`codec::Codec::ZstdFrameXor`], repository version 3): a memory page
//!   stored, inside its shared frame, as its XOR with a similar stored page, its
//!   *reference*, found through a 32-bit similarity feature ([`similarity`]) that index
//!   files keep for every whole memory block ([`raw::FEATURES_FORMAT_VERSION`]; pack
//!   tables do not, so repair takes them from the intact old index files: hints,
//!   lost only with a damaged one). Such a frame's stored bytes start
//!   with a reference table (see [`frame`]); all its members say so in their codec. A
//!   reference obeys the rules of a delta's base: committed, not in a gc plan, whole.
//!
//! ## Write and fsync order
//! See [`store`]: packs (streamed to a temporary object as they fill, each fdatasynced
//! before it is renamed to the hash of its bytes), then the index file, then
//! one directory sync; only after that does the catalog record the snapshot. Nothing
//! stored is modified in place, so a crash at any point leaves every committed
//! snapshot readable and the interrupted one absent.
//!
//! ## gc, repair and locking
//! [`gc`] removes what no snapshot references while creates and mounts keep running:
//! it publishes a plan (`gc/<blake3>`) of the blocks it will remove, waits for the
//! write sessions registered before it ([`lock`]), marks again, and only then deletes;
//! sessions registered later never deduplicate against planned blocks, nor take one
//! as a delta's base or a reference. Marking keeps the base of every live delta and
//! the reference of every live XOR member. [`repair`]
//! rebuilds the index from the packs. Both hold the exclusive maintenance lock. Local
//! locks are `flock`s (released by the kernel when a holder dies). Packs carry a random
//! nonce, so a pack written again can never take the name of one gc is deleting.
//!
//! ## Reads
//! Every block read from storage is checked against its id; corrupt bytes are an error
//! ([`ErrorKind::Corrupt`]), never returned. Decoded blocks are shared through one
//! bounded cache per [`store::Store`], and decoded shared frames through another
//! ([`frame::FrameCache`]), so a sequential reader decodes each frame once.

pub mod backend;
mod buffer;
pub mod codec;
pub mod config;
mod error;
pub mod frame;
pub mod gc;
pub mod id;
pub mod index;
pub mod ingest;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod raw;
pub mod reader;
pub mod repair;
pub mod similarity;
pub mod source;
pub mod store;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
