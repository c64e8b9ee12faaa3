//! Property tests of the whole store path on real sparse files: ingest (full and diff)
//! then restore must give back the same bytes, with holes where there was no data.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use stasis_store::backend::{Backend, CrashBackend, LocalBackend};
use stasis_store::codec::{Algorithm, Compression};
use stasis_store::config::RepoConfig;
use stasis_store::ingest::{ingest_diff, ingest_full};
use stasis_store::manifest::Manifest;
use stasis_store::reader::{PayloadReader, restore};
use stasis_store::store::Store;

/// A piece of a generated payload.
#[derive(Clone, Debug)]
enum Seg {
    Hole(usize),
    Zeros(usize),
    Random(usize, u64),
    /// A copy of an earlier stretch of bytes (dedup within and across payloads).
    Repeat(usize),
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        (1usize..40_000).prop_map(Seg::Hole),
        (1usize..40_000).prop_map(Seg::Zeros),
        (1usize..40_000, any::<u64>()).prop_map(|(n, s)| Seg::Random(n, s)),
        (1usize..40_000).prop_map(Seg::Repeat),
    ]
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half the bytes compressible (text-like), half random.
            if (i / 3000) % 2 == 0 {
                b"abcdefgh"[(x % 8) as usize]
            } else {
                x as u8
            }
        })
        .collect()
}

/// Write the segments into a sparse file at `path`; returns the file's bytes.
fn write_payload(path: &Path, segs: &[Seg]) -> Vec<u8> {
    let f = File::create(path).expect("create");
    let mut bytes: Vec<u8> = Vec::new();
    for s in segs {
        let start = bytes.len();
        match s {
            Seg::Hole(n) => bytes.resize(start + n, 0),
            Seg::Zeros(n) => {
                bytes.resize(start + n, 0);
                f.write_all_at(&vec![0u8; *n], start as u64).expect("write");
            }
            Seg::Random(n, seed) => {
                let d = noise(*n, *seed);
                f.write_all_at(&d, start as u64).expect("write");
                bytes.extend_from_slice(&d);
            }
            Seg::Repeat(n) => {
                let n = (*n).min(start);
                let d = bytes[start - n..start].to_vec();
                f.write_all_at(&d, start as u64).expect("write");
                bytes.extend_from_slice(&d);
            }
        }
    }
    f.set_len(bytes.len() as u64).expect("len");
    bytes
}

fn open_store(dir: &Path, block: u32, compression: Compression) -> Store {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir).expect("backend"));
    let mut cfg = RepoConfig {
        fanout: 4,
        ..RepoConfig::default()
    };
    cfg.block_sizes.disk = block;
    cfg.compression = compression;
    Store::init(be, cfg).expect("init")
}

fn restore_and_check(store: &Store, m: &Manifest, want: &[u8], out: &Path) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .expect("out");
    let st = restore(store, m, &f, &|_| {}).expect("restore");
    let got = std::fs::read(out).expect("read back");
    assert!(
        got == want,
        "restored bytes differ (len {} vs {})",
        got.len(),
        want.len()
    );
    // Sparse: nothing beyond the stored data is allocated (filesystems round up to
    // their own block, so allow one block per written run).
    let allocated = std::fs::metadata(out).expect("stat").blocks() * 512;
    let data_blocks = want
        .chunks(4096)
        .filter(|c| c.iter().any(|b| *b != 0))
        .count() as u64;
    assert!(
        allocated <= st.written + data_blocks * 4096 + 64 * 1024,
        "restored file is not sparse: {allocated} allocated, {} written",
        st.written
    );
    // Random access through the reader agrees too.
    let r = PayloadReader::new(store, *m).expect("reader");
    for (off, len) in [
        (0usize, 1usize),
        (want.len() / 3, 5000),
        (want.len().saturating_sub(7), 100),
    ] {
        let mut buf = vec![0u8; len];
        let n = r.read_at(off as u64, &mut buf).expect("read_at");
        assert_eq!(
            &buf[..n],
            &want[off.min(want.len())..(off + n).min(want.len())]
        );
    }
}

fn compressions() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::default()),
        Just(Compression::none()),
        (0i32..3).prop_map(|l| Compression::new(Algorithm::Lz4, Some(l)).expect("valid")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn full_ingest_restores_byte_identical(
        segs in proptest::collection::vec(seg(), 0..12),
        block_pow in 12u32..15,
        comp in compressions(),
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
        let store = open_store(&dir.path().join("repo"), 1 << block_pow, comp);
        let want = write_payload(&dir.path().join("in"), &segs);
        let f = File::open(dir.path().join("in")).expect("open");
        let mut w = store.writer(comp);
        let (m, st) = ingest_full(&mut w, &f, want.len() as u64, 1 << block_pow, &|_| {}).expect("ingest");
        w.commit().expect("commit");
        prop_assert_eq!(st.size, want.len() as u64);
        restore_and_check(&store, &m, &want, &dir.path().join("out"));
        // A reopened store reads the same.
        let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path().join("repo")).expect("backend"));
        let again = Store::open(be).expect("reopen");
        restore_and_check(&again, &m, &want, &dir.path().join("out2"));
    }

    #[test]
    fn diff_layers_apply_over_the_parent(
        base in proptest::collection::vec(seg(), 1..8),
        edits in proptest::collection::vec((0usize..120, 1usize..6, 0u8..3, any::<u64>()), 0..10),
        new_pages in 0usize..120,
        layers in 1usize..3,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
        let store = open_store(&dir.path().join("repo"), 16384, Compression::default());
        let mut want = write_payload(&dir.path().join("base"), &base);
        let f = File::open(dir.path().join("base")).expect("open");
        let mut w = store.writer(Compression::default());
        let (mut m, _) = ingest_full(&mut w, &f, want.len() as u64, 16384, &|_| {}).expect("ingest");
        w.commit().expect("commit");
        for layer in 0..layers {
            // A diff layer: page-aligned written ranges (zeros included), holes elsewhere.
            let size = if layer == 0 { new_pages.max(1) * 4096 } else { want.len() };
            let path = dir.path().join(format!("layer{layer}"));
            let lf = File::create(&path).expect("create");
            lf.set_len(size as u64).expect("len");
            want.resize(size, 0);
            for (page, n, kind, seed) in &edits {
                let start = (page * 4096).min(size);
                let end = ((page + n) * 4096).min(size);
                if start >= end { continue; }
                let d = match kind { 0 => vec![0u8; end - start], _ => noise(end - start, *seed ^ layer as u64) };
                lf.write_all_at(&d, start as u64).expect("write");
                want[start..end].copy_from_slice(&d);
            }
            let lf = File::open(&path).expect("open");
            let mut w = store.writer(Compression::default());
            let (child, _) = ingest_diff(&mut w, &lf, size as u64, &m, &|_| {}).expect("diff");
            w.commit().expect("commit");
            restore_and_check(&store, &child, &want, &dir.path().join(format!("out{layer}")));
            m = child;
        }
    }
}

/// Kill a write at every backend step: the earlier commit always survives intact and
/// the store always reopens.
#[test]
fn a_crash_at_any_step_keeps_committed_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = write_payload(
        &dir.path().join("a"),
        &[
            Seg::Random(300_000, 1),
            Seg::Hole(50_000),
            Seg::Random(90_000, 2),
        ],
    );
    let next = write_payload(
        &dir.path().join("b"),
        &[
            Seg::Random(200_000, 3),
            Seg::Zeros(20_000),
            Seg::Random(300_000, 4),
        ],
    );
    let mut step = 0u64;
    loop {
        let be = Arc::new(CrashBackend::new());
        let mut cfg = RepoConfig {
            fanout: 4,
            pack_size: 1 << 20,
            ..RepoConfig::default()
        };
        cfg.block_sizes.disk = 4096;
        let store = Store::init(be.clone(), cfg).expect("init");
        let f = File::open(dir.path().join("a")).expect("open");
        let mut w = store.writer(Compression::none());
        let (ma, _) = ingest_full(&mut w, &f, base.len() as u64, 4096, &|_| {}).expect("ingest a");
        w.commit().expect("commit a");
        be.fail_after(step);
        let f = File::open(dir.path().join("b")).expect("open");
        let mut w = store.writer(Compression::none());
        let finished = ingest_full(&mut w, &f, next.len() as u64, 4096, &|_| {})
            .and_then(|(m, _)| w.commit().map(|_| m));
        drop(store);
        be.power_loss(step);
        let store = Store::open(be.clone()).expect("reopen after crash");
        restore_and_check(&store, &ma, &base, &dir.path().join("ra"));
        // Whatever survived is consistent: at most packs no index names (garbage).
        let report = stasis_store::verify::verify_store(&store, true, &|_| {}).expect("verify");
        assert!(
            report.problems.is_empty(),
            "step {step}: {:?}",
            report.problems
        );
        match finished {
            Ok(mb) => {
                // It committed before the failure point: it must be whole.
                restore_and_check(&store, &mb, &next, &dir.path().join("rb"));
                break;
            }
            Err(_) => step += 1,
        }
    }
    assert!(
        step >= 3,
        "the write should span several backend steps, got {step}"
    );
}

/// The index files only speed things up: the packs' own tables rebuild the same index.
#[test]
fn index_rebuilds_from_packs_alone() {
    use stasis_store::index::Index;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
    let store = open_store(&dir.path().join("repo"), 4096, Compression::default());
    let mut manifests = Vec::new();
    for (k, segs) in [
        vec![
            Seg::Random(200_000, 1),
            Seg::Hole(30_000),
            Seg::Repeat(50_000),
        ],
        vec![Seg::Zeros(10_000), Seg::Random(90_000, 2)],
    ]
    .iter()
    .enumerate()
    {
        let want = write_payload(&dir.path().join(format!("in{k}")), segs);
        let f = File::open(dir.path().join(format!("in{k}"))).expect("open");
        let mut w = store.writer(Compression::default());
        let (m, _) = ingest_full(&mut w, &f, want.len() as u64, 4096, &|_| {}).expect("ingest");
        w.commit().expect("commit");
        manifests.push((m, want));
    }
    let loaded = Index::load(&**store.backend()).expect("load");
    let (rebuilt, bad) = Index::rebuild_from_packs(&**store.backend()).expect("rebuild");
    assert!(bad.is_empty());
    assert_eq!(rebuilt.len(), loaded.len());
    for (id, loc) in loaded.iter() {
        let r = rebuilt.get(id).expect("every blob found again");
        assert_eq!(
            (loaded.pack_id(loc), loc.offset, loc.stored_len, loc.codec),
            (rebuilt.pack_id(r), r.offset, r.stored_len, r.codec)
        );
    }
    // With the index files gone, a store using the rebuilt index reads everything.
    for meta in store.backend().list("index/").expect("list") {
        store.backend().delete(&meta.key).expect("delete");
    }
    store.set_index(rebuilt);
    for (k, (m, want)) in manifests.iter().enumerate() {
        restore_and_check(&store, m, want, &dir.path().join(format!("out{k}")));
    }
}
