//! The block store on an S3-compatible object store (Garage, MinIO, AWS), with a
//! bounded cache on the local disk of each host.
//!
//! [`RemoteBackend`] implements [`stasis_store::Backend`], so the store, gc, verify and
//! every reader work on it unchanged. This crate doc is its design contract.
//!
//! ## Objects
//! Each store key (`config`, `packs/<2 hex>/<blake3>.pack`, `index/<blake3>`, `gc/...`)
//! is one object under the repository's prefix: `s3://BUCKET/PREFIX` puts `packs/...`
//! at `PREFIX/packs/...`. Every key but `config` names its content and `config` is
//! written once by `init`, so no object is ever written twice with different bytes:
//! nothing depends on conditional PUT (`If-None-Match`), which Garage ignores. A put is
//! durable when the object store answers, so [`stasis_store::Backend::sync`] has nothing to
//! do for them. A pack (written piece by piece and named at the end) is uploaded
//! *behind* its writer: `finish` starts the upload and returns, at most [`UPLOADS`] run
//! at once, and `sync` waits for them and fails if one failed; the store syncs before
//! it writes the index file that names a pack, so nothing refers to a pack that is not
//! up. Objects larger than [`PART_SIZE`] go up as a multipart upload, its parts in
//! flight together; an object is visible only once complete, so a writer killed
//! mid-upload leaves no object (an unfinished upload is invisible; gc removes the
//! packs whose index never arrived, as on a local disk).
//!
//! ## Reads
//! An object is read in aligned pieces of [`PIECE_SIZE`] bytes. A read takes the pieces
//! it needs from the cache and fetches the missing ones from the object store as
//! ranged GETs, neighbouring pieces coalesced into one request of up to
//! [`MAX_REQUEST`] bytes, up to [`IN_FLIGHT`] requests at once. A piece that one read is
//! fetching is waited for by any other read that wants it, never fetched twice.
//! `prefetch` starts the same fetches in the background. Object sizes come from the
//! cache (each piece records its object's size) or one HEAD per object and process.
//!
//! ## The cache (`--cache-dir`, `--cache-size`)
//! One file per piece, `pieces/<2 hex>/<blake3(key) in 32 hex>-<piece>`, holding a
//! fixed header (magic, piece number, object size, length, the key's length), the key,
//! and the piece's bytes; the header ends with the blake3 of itself and the key. A
//! piece is written to `tmp/<pid>-<random>` and renamed into place, so a crash leaves a
//! whole file or a temporary (removed when its process is gone); no fsync is needed.
//! Every read of a piece checks its header, key and checksum: a truncated or foreign
//! file, or one whose header is damaged, is removed and the piece fetched again. The
//! bytes are checked where every read's are, by the store: each block against its id,
//! packs and index files against their names. When those checks fail, the store asks
//! the backend to `evict` the object: its pieces are dropped from memory and disk, and
//! the read is done once more from the object store, so a damaged cache file is never
//! served; damage in the bucket itself fails both reads. (Hashing each piece's bytes on
//! every read as well cost a restore from the cache as much as decoding its blocks.)
//!
//! Only objects named by their content are cached: never `config` (written once per
//! repository, but a wiped and re-made repository at the same prefix has another).
//! Pieces this host wrote (packs and index files, written through on upload) and
//! pieces it read are kept least-recently-used first out, within the budget: a file's
//! mtime is its last use, so the order survives restarts and is shared by every process
//! of the host using the directory. When a process's count goes over the budget it
//! rescans the directory (seeing other processes' pieces) and removes the least recently
//! used down to 90 % of the budget. [`CacheStats`] gives the figures `stasis cache stats`
//! and `stasis du` print.
//!
//! ## Locks
//! A remote store is shared by hosts, so its [`stasis_store::Locks`] come from outside:
//! the shared catalog's (PostgreSQL advisory locks) in a fleet, or a local directory's
//! for a store used by one host.

mod bridge;
mod cache;
mod location;
mod piece;
mod remote;

pub use cache::{CacheStats, PieceCache};
pub use location::S3Location;
pub use piece::Piece;
pub use remote::{IN_FLIGHT, MAX_REQUEST, PART_SIZE, PIECE_SIZE, RemoteBackend, UPLOADS};

/// Test helpers: a real Garage cluster (the `testing` feature).
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "fuzzing")]
/// The cache file parser, for the fuzz target.
pub mod fuzzing {
    pub use crate::piece::decode_piece;
}
