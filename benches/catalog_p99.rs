//! The catalog at fleet scale, as latency percentiles: 100,000 snapshots across 1,000
//! VMs, on SQLite and on a real PostgreSQL (tools/postgres.sh; or the database at
//! `STASIS_BENCH_PG`) side by side. Each operation runs 2,000 times on random VMs and
//! snapshots; p50, p99 and the maximum of each, in milliseconds. After the load, the
//! planner's statistics are refreshed (`Catalog::optimize`), as autovacuum would.
//!
//! `cargo bench --bench catalog_p99` (loading takes a few minutes; `STASIS_BENCH_VMS`
//! and `STASIS_BENCH_PER_VM` change the size).

use std::time::Instant;

use stasis_catalog::{Catalog, CompressionInfo, ListFilter, NewPayload, NewSnapshot};
use stasis_store::{BlockRef, Compression, Manifest, Role};

fn new_snap(vm: &str, name: &str, parent: Option<String>) -> NewSnapshot {
    let payload = |name: &str, role| NewPayload {
        name: name.into(),
        role,
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
        ..NewSnapshot::new(
            vm,
            name,
            "bench",
            vec![payload("root", Role::Disk), payload("mem", Role::Memory)],
        )
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Fill `cat`; the ids, by VM.
fn load(cat: &mut Catalog, vms: usize, per_vm: usize) -> Vec<Vec<String>> {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(vms);
    for v in 0..vms {
        let vm = format!("vm{v}");
        let mut parent = None;
        let mut these = Vec::with_capacity(per_vm);
        for s in 0..per_vm {
            let snap = cat
                .create(&new_snap(&vm, &format!("s{s}"), parent.take()))
                .expect("create");
            parent = Some(snap.id.clone());
            these.push(snap.id);
        }
        ids.push(these);
    }
    eprintln!(
        "  loaded {} snapshots in {:.0} s",
        vms * per_vm,
        started.elapsed().as_secs_f64()
    );
    ids
}

/// p50, p99 and max of `f`, `n` runs, in ms.
fn percentiles(n: usize, mut f: impl FnMut(usize)) -> (f64, f64, f64) {
    let mut t: Vec<f64> = (0..n)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let at = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    (at(0.5), at(0.99), t[t.len() - 1])
}

type Row = (&'static str, (f64, f64, f64));

fn measure(cat: &Catalog, ids: &[Vec<String>]) -> Vec<Row> {
    const N: usize = 2000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_vm = ids[0].len();
    let mut out = Vec::new();
    // Warm the connection's prepared statements and the database's cache.
    for v in 0..ids.len().min(50) {
        let _ = cat.list(Some(&format!("vm{v}")));
    }
    out.push((
        "list --vm (100 snapshots)",
        percentiles(N, |_| {
            let v = rng.below(ids.len());
            let l = cat.list(Some(&format!("vm{v}"))).expect("list");
            assert_eq!(l.len(), per_vm);
        }),
    ));
    out.push((
        "show (by id)",
        percentiles(N, |_| {
            let v = rng.below(ids.len());
            let id = &ids[v][rng.below(per_vm)];
            assert!(cat.get(id).expect("get").is_some());
        }),
    ));
    out.push((
        "resolve VM/NAME",
        percentiles(N, |_| {
            let (v, s) = (rng.below(ids.len()), rng.below(per_vm));
            let snap = cat.resolve(&format!("vm{v}/s{s}")).expect("resolve");
            assert_eq!(snap.id, ids[v][s]);
        }),
    ));
    out.push((
        "resolve VM (current)",
        percentiles(N, |_| {
            let v = rng.below(ids.len());
            let snap = cat.resolve(&format!("vm{v}")).expect("resolve");
            assert_eq!(snap.id, ids[v][per_vm - 1]);
        }),
    ));
    let tagged = ListFilter {
        tags: vec![("env".into(), "bench".into())],
        limit: Some(50),
        ..ListFilter::default()
    };
    out.push((
        "list --tag env=bench --limit 50",
        percentiles(N / 4, |_| {
            assert_eq!(cat.list_filtered(&tagged).expect("list").len(), 50);
        }),
    ));
    out
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with neither.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let vms = env_usize("STASIS_BENCH_VMS", 1000);
    let per_vm = env_usize("STASIS_BENCH_PER_VM", 100);
    eprintln!("catalog of {vms} VMs x {per_vm} snapshots (2 payloads, 1 tag each)");

    eprintln!("SQLite:");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sqlite = Catalog::open(&dir.path().join("catalog.db")).expect("sqlite");
    sqlite.relax_durability().expect("relax");
    let ids = load(&mut sqlite, vms, per_vm);
    sqlite.optimize().expect("optimize");
    let lite = measure(&sqlite, &ids);
    drop(sqlite);

    eprintln!("PostgreSQL:");
    let server = match std::env::var("STASIS_BENCH_PG") {
        Ok(_) => None,
        Err(_) => stasis_catalog::testing::Postgres::start(),
    };
    let url = match (&server, std::env::var("STASIS_BENCH_PG")) {
        (_, Ok(u)) => u,
        (Some(s), _) => s.database(),
        (None, _) => {
            eprintln!("no PostgreSQL (STASIS_SKIP_POSTGRES is set)");
            return;
        }
    };
    let mut pg = Catalog::open_postgres(&url).expect("postgres");
    pg.relax_durability().expect("relax");
    let ids = load(&mut pg, vms, per_vm);
    // What autovacuum does soon after a load this size.
    pg.optimize().expect("analyze");
    let post = measure(&pg, &ids);

    println!("| operation | SQLite p50 / p99 / max (ms) | PostgreSQL p50 / p99 / max (ms) |");
    println!("|---|---|---|");
    for ((name, l), (_, p)) in lite.iter().zip(&post) {
        println!(
            "| {name} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
            l.0, l.1, l.2, p.0, p.1, p.2
        );
    }
}
