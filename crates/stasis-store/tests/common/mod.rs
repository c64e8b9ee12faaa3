//! Helpers shared by the store's integration tests.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use stasis_store::{
    Backend, BlockId, BlockRef, Compression, FullOptions, IngestStats, LocalBackend, Manifest,
    PayloadReader, RestoreStats, Store, StoreConfig, ingest_full_with, visit_blocks,
};

/// A new repository made with `cfg` in the directory `dir` (which must exist).
pub fn init_at(dir: &Path, cfg: StoreConfig) -> Store {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir).expect("backend"));
    Store::init(be, cfg).expect("init")
}

/// A temporary directory with a new repository made with `cfg` in its `repo`.
pub fn temp_repo(cfg: StoreConfig) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
    let store = init_at(&dir.path().join("repo"), cfg);
    (dir, store)
}

/// Write `bytes` to the file `path`, ingest it whole in blocks of `block_size` with the
/// default compression, and commit: the manifest, the ingest's stats and the pack bytes
/// the commit wrote.
pub fn ingest_file(
    store: &Store,
    path: &Path,
    bytes: &[u8],
    block_size: u32,
    opts: FullOptions<'_>,
) -> (Manifest, IngestStats, u64) {
    std::fs::write(path, bytes).expect("write input");
    let f = File::open(path).expect("open input");
    let mut w = store.writer(Compression::default()).expect("writer");
    let (m, st) = ingest_full_with(&mut w, &f, bytes.len() as u64, block_size, opts, &|_| {})
        .expect("ingest");
    let c = w.commit().expect("commit");
    (m, st, c.stats.pack_bytes)
}

/// Restore `m` into a fresh file at `out` and read it back.
pub fn read_back(store: &Store, m: &Manifest, out: &Path) -> stasis_store::Result<Vec<u8>> {
    restore_to_file(store, m, out).map(|(_, bytes)| bytes)
}

/// Open the repository in `dir` again: a fresh handle, with nothing cached.
pub fn reopen(dir: &Path) -> Store {
    Store::open(Arc::new(LocalBackend::open(dir).expect("backend"))).expect("open")
}

/// The ids of `m`'s data blocks, in block order.
pub fn data_ids(store: &Store, m: &Manifest) -> Vec<BlockId> {
    let mut ids = Vec::new();
    visit_blocks(store, m, 0..m.nblocks(), &mut |_, _, r| {
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
    let st = PayloadReader::new(store, *m)?.restore(&f, &|_| {})?;
    Ok((st, std::fs::read(out).expect("read back")))
}
