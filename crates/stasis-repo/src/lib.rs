//! # stasis-repo
//!
//! The operations on a stasis repository that span its block store and its catalog,
//! shared by the `stasis` CLI and the HTTP server (`stasis-server`) so both do them
//! the same way: [`create`] (ingest a snapshot from files: blocks, then manifests, then
//! the catalog row, in that order), [`fork`] (prepare a new VM's files from a snapshot
//! and record it), [`delete`] (with children re-parented and their sizes recomputed),
//! and the [`mounts`] registry that `stasis fork` uses to find a running mount.
//!
//! Data flows one way: store and catalog know nothing of this crate; the CLI and the
//! server call it.

pub mod create;
mod error;
pub mod fork;
pub mod mounts;
pub mod qcow2;
pub mod roots;
pub mod usage;

use std::path::{Path, PathBuf};

use stasis_catalog::Catalog;
use stasis_store::store::Store;

pub use error::{Error, ErrorKind, Result};

/// Where the block store of the repository at `repo` lives.
pub fn store_dir(repo: &Path) -> PathBuf {
    repo.join("store")
}

/// Where the catalog database of the repository at `repo` lives.
pub fn catalog_path(repo: &Path) -> PathBuf {
    repo.join("catalog.db")
}

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
