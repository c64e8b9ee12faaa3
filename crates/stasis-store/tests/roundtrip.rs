//! Property tests of the whole store path on real sparse files: ingest (full and diff)
//! then restore must give back the same bytes, with holes where there was no data.

mod common;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use stasis_store::{
    Algorithm, Backend, Compression, CrashBackend, LocalBackend, Manifest, PayloadReader, Store,
    StoreConfig, ingest_diff, ingest_full,
};

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
    let mut cfg = StoreConfig {
        fanout: 4,
        ..StoreConfig::default()
    };
    cfg.block_sizes.disk = block;
    cfg.compression = compression;
    Store::init(be, cfg).expect("init")
}

fn restore_and_check(store: &Store, m: &Manifest, want: &[u8], out: &Path) {
    let (st, got) = common::restore_to_file(store, m, out).expect("restore");
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
        let mut w = store.writer(comp).expect("writer");
        let (m, st) = ingest_full(&mut w, &f, want.len() as u64, 1 << block_pow, None, &|_| {}).expect("ingest");
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
        let mut w = store.writer(Compression::default()).expect("writer");
        let (mut m, _) = ingest_full(&mut w, &f, want.len() as u64, 16384, None, &|_| {}).expect("ingest");
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
            let mut w = store.writer(Compression::default()).expect("writer");
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
        let mut cfg = StoreConfig {
            fanout: 4,
            pack_size: 1 << 20,
            ..StoreConfig::default()
        };
        cfg.block_sizes.disk = 4096;
        let store = Store::init(be.clone(), cfg).expect("init");
        let f = File::open(dir.path().join("a")).expect("open");
        let mut w = store.writer(Compression::none()).expect("writer");
        let (ma, _) =
            ingest_full(&mut w, &f, base.len() as u64, 4096, None, &|_| {}).expect("ingest a");
        w.commit().expect("commit a");
        be.fail_after(step);
        let f = File::open(dir.path().join("b")).expect("open");
        let mut w = store.writer(Compression::none()).expect("writer");
        let finished = ingest_full(&mut w, &f, next.len() as u64, 4096, None, &|_| {})
            .and_then(|(m, _)| w.commit().map(|_| m));
        drop(store);
        be.power_loss(step);
        let store = Store::open(be.clone()).expect("reopen after crash");
        restore_and_check(&store, &ma, &base, &dir.path().join("ra"));
        // Whatever survived is consistent: at most packs no index names (garbage).
        let report = stasis_store::verify_store(&store, true, &|_| {}).expect("verify");
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
    use stasis_store::Index;
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
        let mut w = store.writer(Compression::default()).expect("writer");
        let (m, _) =
            ingest_full(&mut w, &f, want.len() as u64, 4096, None, &|_| {}).expect("ingest");
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

// ---------------------------------------------------------------- gc

use stasis_store::{GcOptions, MemoryBackend, Phase, collect_garbage as collect};

type Roots = Vec<(String, Manifest)>;

fn small_config() -> StoreConfig {
    let mut cfg = StoreConfig {
        fanout: 4,
        pack_size: 1 << 20,
        ..StoreConfig::default()
    };
    cfg.block_sizes.disk = 4096;
    cfg
}

/// Ingest `path` as one committed session.
fn put_file(store: &Store, path: &Path, len: usize) -> Manifest {
    let f = File::open(path).expect("open");
    let mut w = store.writer(Compression::default()).expect("writer");
    let (m, _) = ingest_full(&mut w, &f, len as u64, 4096, None, &|_| {}).expect("ingest");
    w.commit().expect("commit");
    m
}

fn gc_with(store: &Store, roots: &Roots) -> stasis_store::Result<stasis_store::GcReport> {
    let mut r = || Ok(roots.clone());
    collect(store, &GcOptions::default(), &mut r, &|_| {})
}

fn assert_clean(store: &Store, what: &str) {
    let report = stasis_store::verify_store(store, true, &|_| {}).expect("verify");
    assert!(report.problems.is_empty(), "{what}: {:?}", report.problems);
    assert!(
        report.unindexed_packs.is_empty(),
        "{what}: garbage left {:?}",
        report.unindexed_packs
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever subset of payloads stays, gc keeps exactly what they need: each restores
    /// byte-identical afterwards, verify is clean, and a second gc finds nothing to do.
    #[test]
    fn gc_keeps_every_root_and_frees_the_rest(
        payloads in proptest::collection::vec(proptest::collection::vec(seg(), 1..6), 2..5),
        keep in proptest::collection::vec(any::<bool>(), 5),
        threshold in 0u8..=100,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
        let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path().join("repo")).expect("be"));
        let store = Store::init(be, small_config()).expect("init");
        let mut all = Vec::new();
        for (i, segs) in payloads.iter().enumerate() {
            let p = dir.path().join(format!("in{i}"));
            let want = write_payload(&p, segs);
            let m = put_file(&store, &p, want.len());
            all.push((format!("p{i}"), m, want));
        }
        let roots: Roots = all.iter().zip(&keep).filter(|(_, k)| **k).map(|((n, m, _), _)| (n.clone(), *m)).collect();
        let opts = GcOptions { dry_run: false, repack_below: f64::from(threshold) / 100.0 };
        let mut r = || Ok(roots.clone());
        let before: u64 = store.backend().list("packs/").expect("ls").iter().map(|m| m.size).sum();
        let report = collect(&store, &opts, &mut r, &|_| {}).expect("gc");
        let after: u64 = store.backend().list("packs/").expect("ls").iter().map(|m| m.size).sum();
        prop_assert_eq!(before - after, report.bytes_freed);
        assert_clean(&store, "after gc");
        // A fresh process sees the same.
        let again = Store::open(Arc::clone(store.backend())).expect("reopen");
        for ((n, m, want), k) in all.iter().zip(&keep) {
            if *k {
                restore_and_check(&again, m, want, &dir.path().join(format!("out-{n}")));
            }
        }
        if roots.is_empty() {
            prop_assert!(again.index().is_empty(), "nothing referenced, nothing kept");
        }
        let second = gc_with(&again, &roots).expect("gc again");
        prop_assert_eq!(second.packs_deleted + second.orphans_deleted, 0);
        if threshold > 0 {
            prop_assert_eq!(second.packs_repacked, 0, "repack converges");
        }
    }
}

/// The race gc must win: a session that started before the plan deduplicates against
/// a block nobody references, and commits its snapshot while gc runs. gc waits for it,
/// marks again, and keeps the block. A session that starts after the plan stores its
/// own copy instead of deduplicating.
#[test]
fn gc_never_removes_a_block_a_running_session_deduplicated() {
    use std::sync::Mutex;
    use std::sync::mpsc::channel;
    let dir = tempfile::tempdir().expect("tmp");
    let a = write_payload(&dir.path().join("a"), &[Seg::Random(200_000, 7)]);
    let b = write_payload(&dir.path().join("b"), &[Seg::Random(120_000, 8)]);
    let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let store = Arc::new(Store::init(be, small_config()).expect("init"));
    // `a` is stored, then its snapshot deleted: its blocks are garbage.
    let _ma = put_file(&store, &dir.path().join("a"), a.len());
    let catalog: Arc<Mutex<Roots>> = Arc::new(Mutex::new(Vec::new()));

    // A session registered before gc starts; it re-stores `a` (deduplicating against
    // every one of the garbage blocks) but has not committed yet.
    let (to_session, session_rx) = channel::<()>();
    let (to_test, test_rx) = channel::<()>();
    let s2 = Arc::clone(&store);
    let c2 = Arc::clone(&catalog);
    let path = dir.path().join("a");
    let len = a.len();
    let session = std::thread::spawn(move || {
        let f = File::open(&path).expect("open");
        let mut w = s2.writer(Compression::default()).expect("writer");
        let (m, st) = ingest_full(&mut w, &f, len as u64, 4096, None, &|_| {}).expect("ingest");
        assert_eq!(st.new_blocks, 0, "deduplicated against the garbage");
        to_test.send(()).expect("send");
        session_rx.recv().expect("recv"); // gc has published its plan and waits
        let committed = w.commit().expect("commit");
        c2.lock().expect("lock").push(("a-again".into(), m));
        drop(committed); // only now may gc go on
        m
    });
    test_rx.recv().expect("session ready");

    let c3 = Arc::clone(&catalog);
    let mut roots = move || Ok(c3.lock().expect("lock").clone());
    let (waiting_tx, waiting_rx) = channel::<usize>();
    let waiting_tx = Mutex::new(waiting_tx);
    let s3 = Arc::clone(&store);
    let gc = std::thread::spawn(move || {
        collect(&s3, &GcOptions::default(), &mut roots, &|p| {
            if let Phase::Wait(n) = p {
                let _ = waiting_tx.lock().expect("lock").send(n);
            }
        })
        .expect("gc")
    });
    assert_eq!(waiting_rx.recv().expect("gc waits"), 1);
    // While gc waits, a new session must not deduplicate against the planned garbage.
    let f = File::open(dir.path().join("b")).expect("open");
    let mut w = store.writer(Compression::default()).expect("writer");
    let fa = File::open(dir.path().join("a")).expect("open");
    let (_, st) = ingest_full(&mut w, &fa, a.len() as u64, 4096, None, &|_| {}).expect("ingest");
    assert!(
        st.new_blocks > 0,
        "a session after the plan stores its own copy"
    );
    let (mb, _) = ingest_full(&mut w, &f, b.len() as u64, 4096, None, &|_| {}).expect("ingest");
    drop(w); // abandoned: its packs are orphans, but it was registered after the plan
    to_session.send(()).expect("send");
    let m_again = session.join().expect("session");
    let report = gc.join().expect("gc thread");
    assert_eq!(report.waited_sessions, 1);
    // The committed snapshot reads back whole.
    restore_and_check(&store, &m_again, &a, &dir.path().join("out"));
    let fresh = Store::open(Arc::clone(store.backend())).expect("reopen");
    restore_and_check(&fresh, &m_again, &a, &dir.path().join("out2"));
    let _ = mb;
}

/// gc interrupted at every backend step, by a process crash or a power loss: every
/// kept snapshot still restores, the repository reopens, and gc run again finishes the
/// job and leaves it clean.
#[test]
fn gc_interrupted_at_any_step_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let files = [
        write_payload(
            &dir.path().join("a"),
            &[
                Seg::Random(300_000, 1),
                Seg::Hole(40_000),
                Seg::Random(100_000, 2),
            ],
        ),
        write_payload(
            &dir.path().join("b"),
            &[Seg::Random(100_000, 1), Seg::Random(250_000, 3)],
        ),
        write_payload(
            &dir.path().join("c"),
            &[Seg::Random(300_000, 1), Seg::Random(90_000, 4)],
        ),
    ];
    for power in [false, true] {
        let mut step = 0u64;
        loop {
            let be = Arc::new(CrashBackend::new());
            let store = Store::init(be.clone(), small_config()).expect("init");
            let ms: Vec<Manifest> = files
                .iter()
                .enumerate()
                .map(|(i, want)| put_file(&store, &dir.path().join(["a", "b", "c"][i]), want.len()))
                .collect();
            // Keep b and c; a's own blocks are garbage and packs shared with it repack.
            let roots: Roots = vec![("b".into(), ms[1]), ("c".into(), ms[2])];
            be.fail_after(step);
            let done = gc_with(&store, &roots);
            drop(store);
            if power {
                be.power_loss(step);
            } else {
                be.process_crash();
            }
            let store = Store::open(be.clone()).expect("reopen after crash");
            for (i, m) in [(1, ms[1]), (2, ms[2])] {
                restore_and_check(&store, &m, &files[i], &dir.path().join("r"));
            }
            let report = stasis_store::verify_store(&store, true, &|_| {}).expect("verify");
            assert!(
                report.problems.is_empty(),
                "step {step}: {:?}",
                report.problems
            );
            // Finish the job.
            gc_with(&store, &roots).expect("gc rerun");
            assert_clean(&store, &format!("power={power} step {step}"));
            for (i, m) in [(1, ms[1]), (2, ms[2])] {
                restore_and_check(&store, &m, &files[i], &dir.path().join("r"));
            }
            match done {
                Ok(_) => break,
                Err(_) => step += 1,
            }
        }
        assert!(step >= 6, "gc should span several steps, got {step}");
    }
}

/// A reader that loaded the index before gc repacked (another process) still reads
/// every block: the vanished pack makes it reload the index. Blocks written after it
/// opened are found the same way.
#[test]
fn readers_follow_repacked_and_new_blocks() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path().join("repo")).expect("be"));
    let writer = Store::init(Arc::clone(&be), small_config()).expect("init");
    let a = write_payload(&dir.path().join("a"), &[Seg::Random(400_000, 1)]);
    let b = write_payload(
        &dir.path().join("b"),
        &[Seg::Random(300_000, 2), Seg::Random(100_000, 1)],
    );
    let ma = put_file(&writer, &dir.path().join("a"), a.len());
    let mb = put_file(&writer, &dir.path().join("b"), b.len());
    // The reader opens now, like a mount.
    let reader = Store::open(Arc::new(
        LocalBackend::open(dir.path().join("repo")).expect("be"),
    ))
    .expect("open");
    // a goes; b's packs are repacked (threshold 100%) by the other store.
    let report = gc_with_threshold(&writer, &vec![("b".into(), mb)], 1.0);
    assert!(
        report.packs_repacked + report.packs_deleted > 0,
        "{report:?}"
    );
    restore_and_check(&reader, &mb, &b, &dir.path().join("rb"));
    // A payload stored after the reader opened.
    let c = write_payload(&dir.path().join("c"), &[Seg::Random(200_000, 9)]);
    let mc = put_file(&writer, &dir.path().join("c"), c.len());
    restore_and_check(&reader, &mc, &c, &dir.path().join("rc"));
    let _ = ma;
}

fn gc_with_threshold(store: &Store, roots: &Roots, t: f64) -> stasis_store::GcReport {
    let mut r = || Ok(roots.clone());
    let opts = GcOptions {
        dry_run: false,
        repack_below: t,
    };
    collect(store, &opts, &mut r, &|_| {}).expect("gc")
}

/// A file that shrank between being opened (its size taken) and being read lists fewer
/// data regions and no read fails; the ingest must still refuse it, not store the
/// missing end as holes.
#[test]
fn an_input_that_shrank_before_it_was_read_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
    let store = open_store(&dir.path().join("repo"), 4096, Compression::default());
    let path = dir.path().join("in");
    std::fs::write(&path, noise(1 << 20, 4)).expect("write");
    let f = File::open(&path).expect("open");
    let mut w = store.writer(Compression::default()).expect("writer");
    // As if it was 8 MiB when opened.
    let err = ingest_full(&mut w, &f, 8 << 20, 4096, None, &|_| {})
        .expect_err("a shrunken input is an error");
    assert!(err.to_string().contains("changed size"), "{err}");
    let ok = ingest_full(&mut w, &f, 1 << 20, 4096, None, &|_| {});
    assert!(ok.is_ok(), "the same file at its real size stores");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Files of several 8 MiB read batches: batch buffers are read into again without
    /// being cleared, so a later batch with holes, data starting inside a block and a
    /// short end must still restore exactly, never showing an earlier batch's bytes.
    #[test]
    fn reused_read_batches_show_no_stale_bytes(
        seed in any::<u64>(),
        block_pow in 12u32..17,
        runs in proptest::collection::vec((0usize..40 << 20, 1usize..300_000), 1..30),
        tail in 0usize..70_000,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("repo")).expect("mkdir");
        let store = open_store(&dir.path().join("repo"), 1 << block_pow, Compression::default());
        let size = (40 << 20) + tail;
        let path = dir.path().join("in");
        let f = File::create(&path).expect("create");
        f.set_len(size as u64).expect("len");
        let mut want = vec![0u8; size];
        // The first batch is all data, so every reused buffer starts out full of it.
        let mut spans = vec![(0usize, 8usize << 20)];
        spans.extend(runs.iter().map(|&(at, n)| (at, n.min(size - at))));
        for (k, (at, n)) in spans.into_iter().enumerate() {
            let d = noise(n, seed ^ k as u64);
            f.write_all_at(&d, at as u64).expect("write");
            want[at..at + n].copy_from_slice(&d);
        }
        let f = File::open(&path).expect("open");
        let mut w = store.writer(Compression::default()).expect("writer");
        let (m, _) = ingest_full(&mut w, &f, size as u64, 1 << block_pow, None, &|_| {}).expect("ingest");
        w.commit().expect("commit");
        restore_and_check(&store, &m, &want, &dir.path().join("out"));
    }
}
