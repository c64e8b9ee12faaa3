//! gc cost follows the live data, not the history: a repository holding a chain of
//! 10,000 snapshots (each changing one 4 KiB block of a 64 MiB disk, one write session
//! each, as `stasis create` makes them) against one holding a single snapshot with the
//! same unique blocks; then the chain after deleting 9 of every 10 snapshots. Compare
//! time per live block (a ratio near 1 is the goal): tree nodes count as live blocks,
//! and each costs a decode, so a chain of live snapshots pays for its distinct nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use stasis_store::{
    Backend, BlobKind, BlockRef, Compression, GcOptions, GcReport, Id, LocalBackend, Manifest,
    Store, StoreConfig, TreeBuilder, apply_changes, collect_garbage as collect,
};

const BLOCK: usize = 4096;
const BASE_BLOCKS: u64 = 16_384; // 64 MiB
const SNAPSHOTS: u64 = 10_000;

fn block(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn store_in(dir: &std::path::Path) -> Store {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir).expect("backend"));
    let mut cfg = StoreConfig::default();
    cfg.block_sizes.disk = BLOCK as u32;
    Store::init(be, cfg).expect("init")
}

/// One manifest over `n` blocks, block i = block(seed_of(i)).
fn full(store: &Store, n: u64, seed_of: impl Fn(u64) -> u64) -> Manifest {
    let mut w = store.writer(Compression::default()).expect("writer");
    let mut tb = TreeBuilder::new(n, 64);
    for i in 0..n {
        let b = block(seed_of(i));
        let id = Id::of(&b);
        w.add(id, BlobKind::Data, &b).expect("add");
        tb.push(0, BlockRef::Data(id), &mut w).expect("push");
    }
    let root = tb.finish(&mut w).expect("finish");
    w.commit().expect("commit");
    Manifest {
        size: n * BLOCK as u64,
        block_size: BLOCK as u32,
        fanout: 64,
        root,
    }
}

fn time_gc(store: &Store, roots: &[(String, Manifest)]) -> (f64, GcReport) {
    let mut r = || Ok(roots.to_vec());
    let t = Instant::now();
    let rep = collect(store, &GcOptions::default(), &mut r, &|_| {}).expect("gc");
    (t.elapsed().as_secs_f64(), rep)
}

fn gc_history(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("a")).expect("mkdir");
    std::fs::create_dir(dir.path().join("b")).expect("mkdir");

    // A: the chain.
    let a = store_in(&dir.path().join("a"));
    let mut m = full(&a, BASE_BLOCKS, |i| i);
    let mut roots = vec![("base".to_string(), m)];
    let t = Instant::now();
    for k in 0..SNAPSHOTS {
        let mut w = a.writer(Compression::default()).expect("writer");
        let b = block(1_000_000 + k);
        let id = Id::of(&b);
        w.add(id, BlobKind::Data, &b).expect("add");
        let changes: BTreeMap<u64, BlockRef> =
            [((k * 7919) % BASE_BLOCKS, BlockRef::Data(id))].into();
        m = apply_changes(&a, &m, m.size, &changes, &mut w).expect("apply");
        w.commit().expect("commit");
        roots.push((format!("s{k}"), m));
    }
    eprintln!(
        "built {SNAPSHOTS} snapshots in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // B: one snapshot with the same unique data blocks.
    let b = store_in(&dir.path().join("b"));
    let one = full(&b, BASE_BLOCKS + SNAPSHOTS, |i| {
        if i < BASE_BLOCKS {
            i
        } else {
            1_000_000 + i - BASE_BLOCKS
        }
    });
    let one_root = vec![("one".to_string(), one)];

    let (ta, ra) = time_gc(&a, &roots);
    let (tb, rb) = time_gc(&b, &one_root);
    eprintln!(
        "first gc: {} snapshots {ta:.3}s ({} live blocks, {} index files merged) vs one snapshot {tb:.3}s ({} live blocks): ratio {:.2}",
        roots.len(),
        ra.live_blobs,
        ra.index_files_replaced,
        rb.live_blobs,
        ta / tb
    );
    // History: delete 9 of every 10 snapshots; what stays is what gc pays for.
    let kept: Vec<(String, Manifest)> = roots
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0)
        .map(|(_, r)| r.clone())
        .collect();
    let (tf, rf) = time_gc(&a, &kept);
    let (tk, rk) = time_gc(&a, &kept);
    let (ta2, _) = time_gc(&b, &one_root);
    eprintln!(
        "after deleting 9,000: freeing gc {tf:.3}s ({} blocks removed); then {tk:.4}s for {} snapshots, {} live blocks ({:.2} us/block) vs one snapshot {ta2:.4}s, {} live blocks ({:.2} us/block)",
        rf.dead_blobs,
        kept.len(),
        rk.live_blobs,
        tk * 1e6 / rk.live_blobs as f64,
        rb.live_blobs,
        ta2 * 1e6 / rb.live_blobs as f64
    );
    let mut g = c.benchmark_group("gc_nothing_to_free");
    g.sample_size(10);
    g.bench_function("chain_1001_kept_of_10001", |bch| {
        bch.iter(|| time_gc(&a, &kept))
    });
    g.bench_function("one_snapshot_same_blocks", |bch| {
        bch.iter(|| time_gc(&b, &one_root))
    });
    g.finish();
}

criterion_group!(benches, gc_history);
criterion_main!(benches);
