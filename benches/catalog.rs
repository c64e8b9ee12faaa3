//! The catalog at scale: 100,000 snapshots across 1,000 VMs plus a 10,000-deep chain.
//! `list --vm`, `show` and resolving by name must stay fast however large the catalog.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stasis_catalog::{AddedSizes, Catalog, CompressionInfo, ListFilter, NewPayload, NewSnapshot};
use stasis_store::{BlockRef, Compression, Manifest, Role};

fn new_snap(vm: &str, name: &str, parent: Option<String>) -> NewSnapshot {
    let payload = NewPayload {
        name: "root".into(),
        role: Role::Disk,
        allocated: 0,
        data_bytes: 0,
        manifest: Manifest {
            size: 1 << 30,
            block_size: 65536,
            fanout: 64,
            root: BlockRef::Hole,
        },
    };
    NewSnapshot {
        parent_id: parent,
        compression: CompressionInfo::from(Compression::default()),
        tags: [("env".to_string(), "bench".to_string())].into(),
        ..NewSnapshot::new(vm, name, "bench", vec![payload])
    }
}

fn catalog(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(_) => return,
    };
    let Ok(mut cat) = Catalog::open(&dir.path().join("catalog.db")) else {
        return;
    };
    let _ = cat.relax_durability();
    let mut some_id = String::new();
    for v in 0..1000 {
        let vm = format!("vm{v}");
        let mut parent = None;
        for s in 0..100 {
            if let Ok(snap) = cat.create(&new_snap(&vm, &format!("s{s}"), parent.take())) {
                some_id = snap.id.clone();
                parent = Some(snap.id);
            }
        }
    }
    let mut parent: Option<String> = None;
    let mut middle = String::new();
    for s in 0..10_000 {
        if let Ok(snap) = cat.create(&new_snap("deep", &format!("d{s}"), parent.take())) {
            if s == 5000 {
                middle = snap.id.clone();
            }
            parent = Some(snap.id);
        }
    }
    let mut g = c.benchmark_group("catalog_100k");
    g.bench_function("list_vm_100", |b| {
        b.iter(|| black_box(cat.list(Some("vm500")).map(|v| v.len())))
    });
    g.bench_function("show_by_id", |b| {
        b.iter(|| black_box(cat.get(&some_id).map(|s| s.is_some())))
    });
    g.bench_function("resolve_vm_name", |b| {
        b.iter(|| black_box(cat.resolve("vm731/s42").map(|s| s.id.len())))
    });
    g.bench_function("resolve_current", |b| {
        b.iter(|| black_box(cat.resolve("vm999").map(|s| s.id.len())))
    });
    g.bench_function("list_tag_limit_50", |b| {
        let f = ListFilter {
            tags: vec![("env".into(), "bench".into())],
            limit: Some(50),
            ..ListFilter::default()
        };
        b.iter(|| black_box(cat.list_filtered(&f).map(|v| v.len())))
    });
    g.sample_size(10);
    g.bench_function("list_deep_chain_10000", |b| {
        b.iter(|| black_box(cat.list(Some("deep")).map(|v| v.len())))
    });
    g.finish();
    // Deleting the middle of the 10,000-deep chain re-parents its child: no recursion.
    let deleted = cat.delete(&middle, false, "bench", &mut |_, _| {
        Ok(AddedSizes::default())
    });
    assert!(deleted.is_ok());
}

criterion_group!(benches, catalog);
criterion_main!(benches);
