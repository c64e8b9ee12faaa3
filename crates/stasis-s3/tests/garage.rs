//! The store on a real 3-node Garage cluster (replication factor 3), two "hosts" with
//! separate caches: what one writes the other reads byte-identical, reads are coalesced,
//! damage in the cache or the bucket is never served, and a stopped node changes nothing.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use stasis_s3::testing::Garage;
use stasis_s3::{MAX_REQUEST, PIECE_SIZE, PieceCache, RemoteBackend};
use stasis_store::{
    Backend, Compression, ErrorKind, Manifest, PayloadReader, Role, Store, StoreConfig, ingest_full,
};

const GIB: u64 = 1 << 30;

/// Incompressible bytes (so packs are full size and go up in parts), with a repeat in
/// the middle (so some blocks deduplicate).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let quarter = n / 4;
    let (a, b) = v.split_at_mut(2 * quarter);
    b[..quarter].copy_from_slice(&a[..quarter]);
    v
}

fn ingest(store: &Store, dir: &Path, bytes: &[u8], at_half: &(dyn Fn() + Sync)) -> Manifest {
    let path = dir.join("input");
    fs::write(&path, bytes).expect("write input");
    let f = File::open(&path).expect("open input");
    let bs = store.config().block_sizes.get(Role::Disk);
    // Progress reports increments: the hook fires once, when the sum passes half.
    let half = bytes.len() as u64 / 2;
    let (sum, done) = (AtomicU64::new(0), AtomicBool::new(false));
    let progress = |n: u64| {
        if sum.fetch_add(n, Ordering::SeqCst) + n >= half && !done.swap(true, Ordering::SeqCst) {
            at_half();
        }
    };
    let mut w = store.writer(Compression::default()).expect("writer");
    let (m, _) = ingest_full(&mut w, &f, bytes.len() as u64, bs, None, &progress).expect("ingest");
    w.commit().expect("commit");
    assert!(done.load(Ordering::SeqCst), "the ingest's hook never fired");
    m
}

fn restore(
    store: Arc<Store>,
    m: &Manifest,
    out: &Path,
    at_half: &(dyn Fn() + Sync),
) -> stasis_store::Result<Vec<u8>> {
    let _ = fs::remove_file(out);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .expect("create output");
    // Progress reports increments (bytes written): the hook fires once, at half of the
    // data written.
    let r = PayloadReader::new(store, *m)?;
    let half: u64 = r
        .data_ranges()?
        .iter()
        .map(|d| d.end - d.start)
        .sum::<u64>()
        / 2;
    let (sum, done) = (AtomicU64::new(0), AtomicBool::new(false));
    r.restore(&f, &|n| {
        if sum.fetch_add(n, Ordering::SeqCst) + n >= half && !done.swap(true, Ordering::SeqCst) {
            at_half();
        }
    })?;
    assert!(
        done.load(Ordering::SeqCst),
        "the restore's hook never fired"
    );
    let mut back = vec![0u8; m.size as usize];
    f.read_exact_at(&mut back, 0).expect("read back");
    Ok(back)
}

fn host(g: &Garage, dir: &Path, name: &str) -> (RemoteBackend, Arc<dyn Backend>) {
    let be = g.backend("fleet", &dir.join(name), GIB);
    let dynbe: Arc<dyn Backend> = Arc::new(be.clone());
    (be, dynbe)
}

#[test]
fn the_store_works_on_garage_through_the_cache() {
    let Some(g) = Garage::start(3) else { return };
    let tmp = tempfile::tempdir().expect("tempdir");

    // The behaviour every backend shares.
    let conf = g.backend("conformance", &tmp.path().join("conf-cache"), GIB);
    stasis_store::testing::backend_conformance(&conf);

    // Host A writes 48 MiB: two packs, the first of 32 MiB in parts.
    let (_a, a_dyn) = host(&g, tmp.path(), "cache-a");
    let store_a = Store::init(a_dyn, StoreConfig::default()).expect("init");
    let bytes = noise(48 << 20, 7);
    let m = ingest(&store_a, tmp.path(), &bytes, &|| {});
    // Only objects named by their content are cached: not the config.
    let peek = PieceCache::open(&tmp.path().join("cache-a"), GIB, PIECE_SIZE).expect("cache");
    assert!(peek.get("config", 0).is_none(), "the config was cached");
    assert!(peek.stats().expect("stats").pieces > 0);
    drop(peek);
    let in_bucket: u64 = g
        .backend("fleet", &tmp.path().join("lister"), GIB)
        .list("")
        .expect("list")
        .iter()
        .map(|o| o.size)
        .sum();

    // Host B, with an empty cache, reads it back byte-identical, in few large GETs.
    let (b, b_dyn) = host(&g, tmp.path(), "cache-b");
    let store_b = Arc::new(Store::open(b_dyn).expect("open on B"));
    let out = tmp.path().join("out");
    assert!(restore(store_b.clone(), &m, &out, &|| {}).expect("restore on B") == bytes);
    let cold = b.cache_stats().expect("stats");
    eprintln!("bucket {in_bucket} bytes; cold restore on B: {cold:?}");
    assert!(cold.requests > 0);
    assert!(
        cold.fetched <= in_bucket + in_bucket / 10,
        "B fetched {} bytes of a {in_bucket}-byte bucket",
        cold.fetched
    );
    assert!(
        cold.fetched / cold.requests >= PIECE_SIZE,
        "reads were not coalesced: {} requests for {} bytes",
        cold.requests,
        cold.fetched
    );
    assert!(cold.fetched / cold.requests <= MAX_REQUEST);

    // Warm: everything comes from B's cache.
    assert!(restore(store_b.clone(), &m, &out, &|| {}).expect("warm restore") == bytes);
    let warm = b.cache_stats().expect("stats");
    assert_eq!(warm.requests, cold.requests, "a warm restore sent requests");

    // A flipped byte in one of B's cache files: the block it holds fails its id, the
    // pack's pieces are dropped and fetched again; never served.
    let pieces = tmp.path().join("cache-b/pieces");
    let victim = fs::read_dir(&pieces)
        .expect("pieces")
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).expect("dir").flatten())
        .map(|e| e.path())
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a cache file");
    let mut damaged = fs::read(&victim).expect("read");
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    fs::write(&victim, &damaged).expect("write");
    // B restarts (so nothing is in its memory; its counters are saved) and reads again.
    drop((store_b, b));
    let (b, b_dyn) = host(&g, tmp.path(), "cache-b");
    let store_b = Arc::new(Store::open(b_dyn).expect("reopen on B"));
    assert!(restore(store_b, &m, &out, &|| {}).expect("restore with a damaged cache") == bytes);
    let after = b.cache_stats().expect("stats");
    assert!(after.dropped > warm.dropped, "{after:?}");
    assert!(after.requests > warm.requests);

    // A flipped byte in a pack in the bucket: an error on a host with an empty cache,
    // never wrong bytes.
    let client = g.client();
    let pack = g
        .backend("fleet", &tmp.path().join("lister"), GIB)
        .list("packs/")
        .expect("list")
        .into_iter()
        .max_by_key(|o| o.size)
        .expect("a pack");
    let path = ObjectPath::parse(format!("fleet/{}", pack.key)).expect("path");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let good = rt
        .block_on(async { client.get(&path).await?.bytes().await })
        .expect("get pack");
    let mut bad = good.to_vec();
    bad[good.len() / 3] ^= 0x10;
    rt.block_on(client.put(&path, bad.into()))
        .expect("damage pack");
    let (_c, c_dyn) = host(&g, tmp.path(), "cache-c");
    let store_c = Arc::new(Store::open(c_dyn).expect("open on C"));
    let e = restore(store_c, &m, &out, &|| {}).expect_err("a damaged pack was read");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    rt.block_on(client.put(&path, good.into())).expect("undo");
}

#[test]
fn a_stopped_node_stops_neither_ingest_nor_reads() {
    let Some(g) = Garage::start(3) else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_a, a_dyn) = host(&g, tmp.path(), "cache-a");
    let store_a = Store::init(a_dyn, StoreConfig::default()).expect("init");
    let bytes = noise(40 << 20, 11);
    // Node 3 goes down halfway through the ingest (the progress callback is the hook).
    let m = ingest(&store_a, tmp.path(), &bytes, &|| {
        g.stop_node(3);
        assert!(!g.node_running(3));
    });
    // Node 3 comes back and node 2 goes down halfway through a read on another host.
    g.restart_node(3);
    let (_b, b_dyn) = host(&g, tmp.path(), "cache-b");
    let store_b = Arc::new(Store::open(b_dyn).expect("open on B"));
    let back = restore(store_b, &m, &tmp.path().join("out"), &|| {
        g.stop_node(2);
        assert!(!g.node_running(2));
    })
    .expect("restore");
    assert!(back == bytes, "bytes differ after a node stopped");
}
