//! Helpers shared by the store's integration tests.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use stasis_store::backend::LocalBackend;
use stasis_store::id::BlockId;
use stasis_store::manifest::{self, BlockRef, Manifest};
use stasis_store::reader::{RestoreStats, restore};
use stasis_store::store::Store;

/// Open the repository in `dir` again: a fresh handle, with nothing cached.
pub fn reopen(dir: &Path) -> Store {
    Store::open(Arc::new(LocalBackend::open(dir).expect("backend"))).expect("open")
}

/// The ids of `m`'s data blocks, in block order.
pub fn data_ids(store: &Store, m: &Manifest) -> Vec<BlockId> {
    let mut ids = Vec::new();
    manifest::visit_blocks(store, m, 0..m.nblocks(), &mut |_, _, r| {
        if let BlockRef::Data(id) = r {
            ids.push(id);
        }
        Ok(())
    })
    .expect("walk");
    ids
}

/// Restore `m` into a fresh file at `out`; returns what restore reported and the bytes
/// read back from the file.
pub fn restore_to_file(
    store: &Store,
    m: &Manifest,
    out: &Path,
) -> stasis_store::Result<(RestoreStats, Vec<u8>)> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .expect("out");
    let st = restore(store, m, &f, &|_| {})?;
    Ok((st, std::fs::read(out).expect("read back")))
}
