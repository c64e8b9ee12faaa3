//! Delta blocks: a block that replaces its parent's block at the same place is stored as
//! a zstd delta on it when that pays. Restores stay byte-identical, gc keeps every live
//! delta's base, and a missing, damaged or delta base is an error, never wrong bytes.

mod common;

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use stasis_store::{
    Backend, BlobKind, Codec, Compression, FullOptions, GcOptions, Id, IngestStats, LocalBackend,
    Manifest, Store, StoreConfig, collect_garbage as collect, compress_delta,
};

const PAGE: usize = 4096;

/// A temporary directory with a new default repository (small fanout, so trees have
/// several levels) in its `repo`.
fn fresh_store() -> (tempfile::TempDir, Store) {
    common::temp_repo(StoreConfig {
        fanout: 8,
        ..StoreConfig::default()
    })
}

/// Pages of made-up guest memory: words from a small alphabet, so that they compress a
/// little alone and each page differs from the others.
fn memory(pages: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(pages * PAGE);
    for _ in 0..pages * PAGE / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = if x.is_multiple_of(3) {
            0
        } else {
            x & 0x0000_ffff_ffff_f0f0
        };
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// A later point in time: a few words changed in some pages.
fn touch(mem: &[u8], pages: &[usize], seed: u64) -> Vec<u8> {
    let mut out = mem.to_vec();
    for (n, &p) in pages.iter().enumerate() {
        for k in 0..4 {
            let at = p * PAGE + ((seed as usize + n * 97 + k * 1031) % (PAGE - 8));
            out[at] ^= 0x5a;
        }
    }
    out
}

fn ingest(
    store: &Store,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    parent: Option<&Manifest>,
) -> (Manifest, IngestStats, u64) {
    let opts = FullOptions {
        parent,
        similar: false,
    };
    common::ingest_file(store, &dir.join(name), bytes, PAGE as u32, opts)
}

fn read_back(store: &Store, m: &Manifest, dir: &Path, name: &str) -> stasis_store::Result<Vec<u8>> {
    common::read_back(store, m, &dir.join(name))
}

#[test]
fn changed_pages_are_stored_as_small_deltas_and_read_back() {
    let (dir, store) = fresh_store();
    let t1 = memory(256, 1);
    let changed: Vec<usize> = (0..256).step_by(5).collect();
    let t2 = touch(&t1, &changed, 7);

    let (m1, _, _) = ingest(&store, dir.path(), "t1", &t1, None);
    let (m2, st, with_delta) = ingest(&store, dir.path(), "t2", &t2, Some(&m1));
    assert_eq!(st.new_blocks, changed.len() as u64);
    assert_eq!(
        st.delta_blocks,
        changed.len() as u64,
        "every touched page is a delta"
    );
    assert_eq!(
        read_back(&store, &m2, dir.path(), "r2").expect("restore"),
        t2
    );
    assert_eq!(
        read_back(&store, &m1, dir.path(), "r1").expect("restore"),
        t1
    );

    // The same pages stored whole take several times the bytes.
    let (dir2, plain) = fresh_store();
    ingest(&plain, dir2.path(), "t1", &t1, None);
    let (_, st, whole) = ingest(&plain, dir2.path(), "t2", &t2, None);
    assert_eq!(st.delta_blocks, 0);
    assert!(
        with_delta * 3 < whole,
        "deltas took {with_delta} bytes, whole pages {whole}"
    );

    let report = stasis_store::verify_store(&store, true, &|_| {}).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for (m, what) in [(&m1, "t1"), (&m2, "t2")] {
        let p = stasis_store::verify_manifest(&store, m, what, &Default::default());
        assert!(p.is_empty(), "{p:?}");
    }
}

#[test]
fn gc_keeps_the_bases_of_live_deltas() {
    let (dir, store) = fresh_store();
    let t1 = memory(128, 3);
    let t2 = touch(&t1, &(0..128).step_by(3).collect::<Vec<_>>(), 11);
    let (m1, _, _) = ingest(&store, dir.path(), "t1", &t1, None);
    let (m2, st, _) = ingest(&store, dir.path(), "t2", &t2, Some(&m1));
    assert!(st.delta_blocks > 0);

    // t1 deleted: only t2 is a root. Its deltas' bases are t1's pages, which must stay.
    let opts = GcOptions {
        repack_below: 1.0,
        ..GcOptions::default()
    };
    let mut roots = || Ok(vec![("t2".to_string(), m2)]);
    let report = collect(&store, &opts, &mut roots, &|_| {}).expect("gc");
    assert!(report.packs_deleted > 0, "{report:?}");
    // A fresh handle: this one has the bases in its block cache from the ingest.
    let store = common::reopen(&dir.path().join("repo"));
    assert_eq!(
        read_back(&store, &m2, dir.path(), "r2").expect("restore after gc"),
        t2
    );
    let v = stasis_store::verify_store(&store, true, &|_| {}).expect("verify");
    assert!(v.problems.is_empty(), "{:?} after {report:?}", v.problems);

    // Nothing live: everything goes, bases included.
    let mut none = || Ok(vec![]);
    collect(&store, &opts, &mut none, &|_| {}).expect("gc all");
    store.reload_index().expect("reload");
    assert_eq!(store.index().len(), 0);
}

#[test]
fn a_delta_without_its_base_is_an_error() {
    let (dir, store) = fresh_store();
    let t1 = memory(64, 5);
    let t2 = touch(&t1, &[0, 9, 33], 3);
    let (m1, _, _) = ingest(&store, dir.path(), "t1", &t1, None);
    let (m2, st, _) = ingest(&store, dir.path(), "t2", &t2, Some(&m1));
    assert_eq!(st.delta_blocks, 3);

    // gc with a root list that forgets t2 but keeps t1 would never drop a base; drop
    // the base by hand instead: its pack goes, as a damaged disk would lose it.
    let delta = common::data_ids(&store, &m2)[0];
    let base = store.base_of(&delta).expect("read").expect("a delta");
    let (pack, _) = store.locate(&base).expect("base indexed");
    store
        .backend()
        .delete(&stasis_store::pack_key(&pack))
        .expect("delete");
    // A fresh handle: this one has the base in its block cache from the ingest.
    drop(store);
    let store = common::reopen(&dir.path().join("repo"));
    match read_back(&store, &m2, dir.path(), "r2") {
        Ok(_) => panic!("a delta whose base is lost read back"),
        Err(e) => assert!(e.to_string().contains("base"), "{e}"),
    }
    let v = stasis_store::verify_store(&store, true, &|_| {}).expect("verify");
    assert!(!v.problems.is_empty());
}

#[test]
fn a_delta_on_a_delta_is_refused() {
    let (_dir, store) = fresh_store();
    let a = memory(1, 1);
    let b = touch(&a, &[0], 1);
    let c = touch(&b, &[0], 2);
    let (ia, ib, ic) = (Id::of(&a), Id::of(&b), Id::of(&c));
    // b is a delta on a, then c a delta on b: written by hand, as a damaged or hostile
    // repository could hold them (the writer never picks a delta as a base).
    let mut w = store.writer(Compression::default()).expect("writer");
    let mut d = Vec::new();
    w.add(ia, BlobKind::Data, &a).expect("add a");
    compress_delta(1, &ia.0, &a, &b, &mut d).expect("delta b");
    w.add_encoded(ib, BlobKind::Data, Codec::ZstdDelta, PAGE as u32, &d)
        .expect("add b");
    compress_delta(1, &ib.0, &b, &c, &mut d).expect("delta c");
    w.add_encoded(ic, BlobKind::Data, Codec::ZstdDelta, PAGE as u32, &d)
        .expect("add c");
    w.commit().expect("commit");
    assert_eq!(&store.read_blob(&ib).expect("b reads")[..], &b[..]);
    let err = store
        .read_blob(&ic)
        .expect_err("c names a delta as its base");
    assert!(
        err.to_string().contains("itself read through a base"),
        "{err}"
    );
    // A delta whose bytes decode to something else than its id fails its check.
    let wrong = Id::of(b"not these bytes");
    compress_delta(1, &ia.0, &a, &b, &mut d).expect("delta");
    let mut w = store.writer(Compression::default()).expect("writer");
    w.add_encoded(wrong, BlobKind::Data, Codec::ZstdDelta, PAGE as u32, &d)
        .expect("add");
    w.commit().expect("commit");
    assert!(store.read_blob(&wrong).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever changed between parent and child, and however, the child reads back
    /// byte-identical and so does the parent.
    #[test]
    fn restore_with_deltas_is_byte_identical(
        pages in 1usize..48,
        seed in any::<u64>(),
        changed in proptest::collection::vec(any::<usize>(), 0..24),
        rewrite in proptest::collection::vec(any::<usize>(), 0..4),
        grow in 0usize..3,
    ) {
        let (dir, store) = fresh_store();
        let t1 = memory(pages, seed);
        let changed: Vec<usize> = changed.iter().map(|c| c % pages).collect();
        let mut t2 = touch(&t1, &changed, seed);
        // Some pages rewritten whole (no delta pays), some zeroed, and the file may grow.
        for r in &rewrite {
            let p = r % pages;
            let fresh = memory(1, seed ^ *r as u64);
            t2[p * PAGE..(p + 1) * PAGE].copy_from_slice(&fresh);
        }
        if let Some(r) = rewrite.first() {
            let p = (r / 7) % pages;
            t2[p * PAGE..(p + 1) * PAGE].fill(0);
        }
        t2.extend_from_slice(&memory(grow, seed + 1));
        let (m1, _, _) = ingest(&store, dir.path(), "t1", &t1, None);
        let (m2, _, _) = ingest(&store, dir.path(), "t2", &t2, Some(&m1));
        let t3 = touch(&t2, &changed, seed + 5);
        let (m3, _, _) = ingest(&store, dir.path(), "t3", &t3, Some(&m2));
        prop_assert_eq!(read_back(&store, &m1, dir.path(), "r1").expect("t1"), t1);
        prop_assert_eq!(read_back(&store, &m2, dir.path(), "r2").expect("t2"), t2);
        prop_assert_eq!(read_back(&store, &m3, dir.path(), "r3").expect("t3"), t3);
    }
}

/// A version 1 repository (which earlier releases read, and would take a delta in for
/// damage) never gets a delta; a version this code does not know is refused.
#[test]
fn version_one_repositories_get_no_deltas() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
    let be: Arc<dyn Backend> =
        Arc::new(LocalBackend::open(dir.path().join("repo")).expect("backend"));
    let cfg = StoreConfig {
        version: 1,
        ..StoreConfig::default()
    };
    let store = Store::init(be, cfg).expect("init");
    let t1 = memory(32, 9);
    let t2 = touch(&t1, &[1, 2, 3], 9);
    let (m1, _, _) = ingest(&store, dir.path(), "t1", &t1, None);
    let (m2, st, _) = ingest(&store, dir.path(), "t2", &t2, Some(&m1));
    assert_eq!((st.new_blocks, st.delta_blocks), (3, 0));
    // Its packs and index files keep the plain tables earlier releases read.
    for prefix in ["packs/", "index/"] {
        for meta in store.backend().list(prefix).expect("list") {
            let head = store.backend().get(&meta.key, Some(0..12)).expect("head");
            assert_eq!(head[8..12], 1u32.to_le_bytes(), "{}", meta.key);
        }
    }
    assert_eq!(
        read_back(&store, &m2, dir.path(), "r2").expect("restore"),
        t2
    );

    let future = StoreConfig {
        version: stasis_store::REPO_VERSION + 1,
        ..StoreConfig::default()
    };
    let err = future.validate().expect_err("unknown version");
    assert!(err.to_string().contains("not supported"), "{err}");
}
