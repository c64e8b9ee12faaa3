//! Blocks shared by many snapshots are decoded once: reading every snapshot through a
//! real mount fetches each stored block from the backend once, however many files hold
//! it. The backend is wrapped to log every range read (one per block decode: the store
//! reads a block's stored bytes with one `get`). Needs root and /dev/fuse, as in CI.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stasis_catalog::{Catalog, NewPayload, NewSnapshot};
use stasis_store::{
    Backend, BlockId, BlockRef, Bytes, Compression, LocalBackend, Manifest, ObjectMeta, Role,
    Store, StoreConfig, visit_blocks,
};

/// A backend that logs every ranged read.
#[derive(Debug)]
struct Counting {
    inner: LocalBackend,
    gets: Mutex<Vec<(String, Range<u64>)>>,
}

impl Counting {
    fn gets(&self) -> Vec<(String, Range<u64>)> {
        self.gets.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Backend for Counting {
    fn put(&self, key: &str, data: &[u8]) -> stasis_store::Result<()> {
        self.inner.put(key, data)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> stasis_store::Result<Bytes> {
        if let Some(r) = &range {
            self.gets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key.to_string(), r.clone()));
        }
        self.inner.get(key, range)
    }
    fn size(&self, key: &str) -> stasis_store::Result<u64> {
        self.inner.size(key)
    }
    fn list(&self, prefix: &str) -> stasis_store::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> stasis_store::Result<()> {
        self.inner.delete(key)
    }
    fn sync(&self) -> stasis_store::Result<()> {
        self.inner.sync()
    }

    fn locks(&self) -> &dyn stasis_store::Locks {
        self.inner.locks()
    }
    fn create(
        &self,
        prefix: &str,
    ) -> stasis_store::Result<Box<dyn stasis_store::PartialObject + '_>> {
        self.inner.create(prefix)
    }
}

/// Deterministic incompressible bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Store `bytes` as snapshot `vm/name` with one disk, `root`.
fn snapshot(store: &Store, cat: &mut Catalog, dir: &Path, vm: &str, bytes: &[u8]) -> Manifest {
    let path = dir.join(format!("{vm}.img"));
    std::fs::write(&path, bytes).expect("write input");
    let f = File::open(&path).expect("open input");
    let mut w = store.writer(Compression::default()).expect("writer");
    let bs = store.config().block_sizes.get(Role::Disk);
    let (m, st) = stasis_store::ingest_full(&mut w, &f, bytes.len() as u64, bs, None, &|_| {})
        .expect("ingest");
    w.commit().expect("commit");
    let p = NewPayload {
        name: "root".into(),
        role: Role::Disk,
        allocated: st.allocated,
        data_bytes: st.data_bytes,
        manifest: m,
    };
    cat.create(&NewSnapshot::new(vm, "snap", "test", vec![p]))
        .expect("catalog");
    m
}

/// Where each of a payload's data blocks is stored: (pack key, byte range) by block id.
fn locations(store: &Store, m: &Manifest) -> HashMap<BlockId, (String, Range<u64>)> {
    let mut out = HashMap::new();
    visit_blocks(store, m, 0..m.nblocks(), &mut |_, _, r| {
        if let BlockRef::Data(id) = r {
            let (pack, loc) = store.locate(&id).expect("indexed");
            let key = stasis_store::pack_key(&pack);
            out.insert(
                id,
                (key, loc.offset..loc.offset + u64::from(loc.stored_len)),
            );
        }
        Ok(())
    })
    .expect("walk");
    out
}

#[test]
fn shared_blocks_are_decoded_once_across_snapshots() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test mounts: it needs /dev/fuse (CI runs it as root)"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("store");
    std::fs::create_dir(&repo).expect("mkdir");
    let mut cat = Catalog::open(&dir.path().join("catalog.db")).expect("catalog");
    let (ma, mb, a, b) = {
        let store = Store::init(
            Arc::new(LocalBackend::open(&repo).expect("backend")),
            StoreConfig::default(),
        )
        .expect("init");
        // Two VMs' disks that share all but one 64 KiB block.
        let a = noise(4 << 20, 1);
        let mut b = a.clone();
        b[(1 << 20) + 100..(1 << 20) + 200].copy_from_slice(&noise(100, 2));
        let ma = snapshot(&store, &mut cat, dir.path(), "vm-a", &a);
        let mb = snapshot(&store, &mut cat, dir.path(), "vm-b", &b);
        (ma, mb, a, b)
    };

    // A fresh store (empty block cache) over the counting backend.
    let backend = Arc::new(Counting {
        inner: LocalBackend::open(&repo).expect("backend"),
        gets: Mutex::new(Vec::new()),
    });
    let store = Arc::new(Store::open(backend.clone()).expect("open"));
    let (la, lb) = (locations(&store, &ma), locations(&store, &mb));
    let data_a: HashSet<_> = la.values().cloned().collect();
    let only_b: HashSet<_> = lb
        .iter()
        .filter(|(id, _)| !la.contains_key(id))
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(la.len(), 64, "64 distinct blocks in A");
    assert_eq!(only_b.len(), 1, "B changed one block");
    assert_eq!(lb.len() - only_b.len(), 63, "B shares the other 63");

    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).expect("mkdir");
    let fs = stasis_fuse::SnapshotFs::new(Arc::clone(&store), cat);
    let session = stasis_fuse::spawn(fs, &point).expect("mount");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !point.join("vms").exists() {
        assert!(Instant::now() < deadline, "mount did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    let is_data = |g: &(String, Range<u64>)| data_a.contains(g) || only_b.contains(g);
    let data_gets = |from: usize| -> Vec<(String, Range<u64>)> {
        backend.gets()[from..]
            .iter()
            .filter(|g| is_data(g))
            .cloned()
            .collect()
    };

    let start = backend.gets().len();
    let got_a = std::fs::read(point.join("vms/vm-a/snap/root")).expect("read A");
    assert!(got_a == a, "A reads back byte for byte");
    let after_a = backend.gets().len();
    let gets_a = data_gets(start);
    assert_eq!(
        gets_a.iter().cloned().collect::<HashSet<_>>(),
        data_a,
        "reading A decodes every block of A"
    );
    assert_eq!(gets_a.len(), data_a.len(), "and each once");

    // B is another file (another inode, so nothing comes from A's page cache): only its
    // own block is fetched; the 63 it shares with A come from the store's cache.
    let fb = File::open(point.join("vms/vm-b/snap/root")).expect("open B");
    let mut got_b = vec![0u8; b.len()];
    fb.read_exact_at(&mut got_b, 0).expect("read B");
    assert!(got_b == b, "B reads back byte for byte");
    let gets_b = data_gets(after_a);
    assert_eq!(
        gets_b.iter().cloned().collect::<HashSet<_>>(),
        only_b,
        "reading B decodes only the block A does not have"
    );
    assert_eq!(gets_b.len(), 1, "once");
    // And nothing at all, tree nodes included, was fetched twice.
    let all = backend.gets();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "no range fetched twice: {all:?}");
    drop(fb);
    drop(session);
}
