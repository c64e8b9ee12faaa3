//! # stasis-repo
//!
//! A stasis repository, and the operations on it that span its block store and its
//! catalog, shared by the `stasis` CLI and the HTTP server (`stasis-server`) so both do
//! them the same way; they only parse, call and print.
//!
//! - [`Repository`]: the front door. [`RepoConfig`] says where the blocks
//!   ([`StoreUrl`]) and the catalog ([`CatalogUrl`]) are; this is the only code that
//!   names a backend type, a catalog file or the repository's directories.
//! - [`create`]: ingest a snapshot from files (blocks, then manifests, then the catalog
//!   row, in that order), from one [`create::CreateSpec`] that the CLI and the server
//!   both fill in.
//! - [`fork`]: prepare a new VM's files from a snapshot and record it; [`restore`]: a
//!   snapshot's files back into a directory; [`delete`]: with children re-parented and
//!   their sizes recomputed.
//! - [`schedule`]: run due snapshot schedules; [`retention`]: restic's keep policy
//!   and `forget`.
//! - [`gc`] (its roots come from the catalog), [`verify`] (and repair), [`usage`].
//! - [`guest`]: the guest's files in a snapshot's disks (`SNAP:DISK:/path`), listed,
//!   read and copied out without root ([`stasis_guestfs`]).
//! - [`hypervisor`]: which hypervisor wrote a snapshot's files, from the files.
//! - [`roots`]: which files a tenant may name; [`mounts`]: the registry of running
//!   mounts that a fork finds.
//! - [`PgLocks`]: the store's locks as PostgreSQL advisory locks, for hosts that share
//!   a PostgreSQL catalog.
//!
//! Data flows one way: store and catalog know nothing of this crate; the CLI and the
//! server call it.

pub mod create;
mod error;
pub mod fork;
pub mod gc;
pub mod guest;
pub mod hypervisor;
pub mod instance;
pub mod mounts;
mod pg_locks;
pub mod qcow2;
mod repository;
pub mod restore;
pub mod retention;
pub mod roots;
pub mod schedule;
pub mod usage;
pub mod verify;

use stasis_catalog::Catalog;
use stasis_store::Store;

pub use error::{Error, ErrorKind, Result};
pub use pg_locks::PgLocks;
pub use repository::{
    CacheConfig, CatalogOpener, CatalogUrl, DEFAULT_CACHE_BYTES, DamagedIndex, Hooks, Initialised,
    OpenOptions, RepoConfig, Repository, StoreUrl,
};
pub use stasis_s3::CacheStats;

/// Delete snapshot `spec` (or its subtree): children are re-parented and their
/// `added_bytes` recomputed against their new parent from the store's trees. Returns
/// the ids deleted.
pub fn delete(
    store: &Store,
    catalog: &mut Catalog,
    spec: &str,
    recursive: bool,
    actor: &str,
) -> Result<Vec<String>> {
    Ok(
        catalog.delete(spec, recursive, actor, &mut |child, parent| {
            usage::added_over(store, child.payloads.iter().map(|p| &p.manifest), parent).map_err(
                |e| stasis_catalog::Error::new(stasis_catalog::ErrorKind::Database, e.to_string()),
            )
        })?,
    )
}
