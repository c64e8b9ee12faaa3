//! Helpers shared by the store's integration tests.

use std::fs::OpenOptions;
use std::path::Path;

use stasis_store::manifest::Manifest;
use stasis_store::reader::{RestoreStats, restore};
use stasis_store::store::Store;

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
