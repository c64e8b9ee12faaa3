//! [`RemoteBackend`]: the store's objects in an object store, read through the cache.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use stasis_store::{
    Backend, Error, ErrorKind, Locks, ObjectMeta, PartialObject, Result, check_key, check_prefix,
    slice_range,
};

use crate::bridge::Bridge;
use crate::cache::{CacheStats, PieceCache};

/// Objects are read and cached in aligned pieces of this many bytes.
pub const PIECE_SIZE: u64 = 1 << 20;
/// The most bytes one ranged GET asks for (neighbouring pieces coalesced).
pub const MAX_REQUEST: u64 = 8 << 20;
/// Requests kept in flight at once, by one read or one upload.
pub const IN_FLIGHT: usize = 8;
/// Objects larger than this go up as a multipart upload, in parts of this size.
pub const PART_SIZE: usize = 8 << 20;
/// Packs uploading behind their writer at once (each held in memory until it is up).
pub const UPLOADS: usize = 2;
/// Pieces kept in memory, so reads of neighbouring blocks do not open and map the same
/// cache file again.
const HOT_BYTES: u64 = 32 << 20;

#[derive(Clone, Debug)]
struct PieceWeight;
impl quick_cache::Weighter<(String, u64), Bytes> for PieceWeight {
    fn weight(&self, k: &(String, u64), v: &Bytes) -> u64 {
        (v.len() + k.0.len() + 64) as u64
    }
}

/// The store's objects under a prefix of an object store, read through a [`PieceCache`].
#[derive(Clone)]
pub struct RemoteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// What to call it in messages (`s3://bucket/prefix`).
    name: String,
    prefix: String,
    cache: PieceCache,
    hot: quick_cache::sync::Cache<(String, u64), Bytes, PieceWeight>,
    locks: Arc<dyn Locks>,
    bridge: Bridge,
    sizes: Mutex<HashMap<String, u64>>,
    /// Pieces some read is fetching now, and a signal when one arrives.
    fetching: Mutex<HashSet<(String, u64)>>,
    fetched: Condvar,
    /// Prefetch threads running (bounded by [`IN_FLIGHT`]).
    prefetching: AtomicUsize,
    /// Uploads running behind their writers, and the first that failed.
    uploads: Mutex<Uploads>,
    uploaded: Condvar,
}

#[derive(Debug, Default)]
struct Uploads {
    running: usize,
    failed: Option<String>,
}

impl fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value stays valid if a holder panicked (maps of plain values).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_error(what: String, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{what}: {e}"))
}

/// Whether `key`'s bytes may be cached: every key names its content except the
/// store's `config`, which a wiped and re-made repository at the same prefix writes
/// again with other bytes (it is tiny and read once per process).
fn cacheable(key: &str) -> bool {
    key != "config"
}

/// Pieces a read claimed; released (and the waiters woken) however the read ends.
struct Claim<'a> {
    inner: &'a Inner,
    key: String,
    pieces: Vec<u64>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut f = lock(&self.inner.fetching);
        for &i in &self.pieces {
            f.remove(&(self.key.clone(), i));
        }
        drop(f);
        self.inner.fetched.notify_all();
    }
}

impl RemoteBackend {
    /// The objects under `prefix` (no leading or trailing `/`; empty for the root) of
    /// `store`, called `name` in messages, cached in `cache` and coordinated by `locks`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        name: impl Into<String>,
        prefix: &str,
        cache: PieceCache,
        locks: Arc<dyn Locks>,
    ) -> Result<Self> {
        Ok(RemoteBackend {
            inner: Arc::new(Inner {
                store,
                name: name.into(),
                prefix: prefix.trim_matches('/').to_string(),
                cache,
                hot: quick_cache::sync::Cache::with_weighter(64, HOT_BYTES, PieceWeight),
                locks,
                bridge: Bridge::new()?,
                sizes: Mutex::new(HashMap::new()),
                fetching: Mutex::new(HashSet::new()),
                fetched: Condvar::new(),
                prefetching: AtomicUsize::new(0),
                uploads: Mutex::new(Uploads::default()),
                uploaded: Condvar::new(),
            }),
        })
    }

    /// The cache's figures.
    pub fn cache_stats(&self) -> Result<CacheStats> {
        self.inner.cache.stats()
    }

    /// Empty the cache.
    pub fn clear_cache(&self) -> Result<()> {
        self.inner.cache.clear()
    }
}

impl Inner {
    fn path(&self, key: &str) -> Result<ObjectPath> {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("bad object key {key:?}: {e}"),
            )
        })
    }

    fn what(&self, op: &str, key: &str) -> String {
        format!("{op} {key} in {}", self.name)
    }

    /// The size of object `key`: known, from any cached piece 0, or one HEAD.
    fn size_of(&self, key: &str) -> Result<u64> {
        if let Some(&s) = lock(&self.sizes).get(key) {
            return Ok(s);
        }
        let size = match self.cache.get(key, 0) {
            Some(p) => p.object_size,
            None => {
                let (store, path) = (self.store.clone(), self.path(key)?);
                self.bridge
                    .run(async move { store.head(&path).await })?
                    .map_err(|e| store_error(self.what("reading the size of", key), e))?
                    .size
            }
        };
        lock(&self.sizes).insert(key.to_string(), size);
        Ok(size)
    }

    /// Pieces `first..=last` of `key` (an object of `size` bytes), from the cache or
    /// fetched: the missing ones in coalesced ranged GETs, several in flight, each piece
    /// fetched by one read while others that want it wait.
    /// With `keep` false (a prefetch) the pieces are only made present in the cache and
    /// in memory, and nothing is returned.
    fn pieces(
        &self,
        key: &str,
        size: u64,
        first: u64,
        last: u64,
        keep: bool,
    ) -> Result<Vec<Bytes>> {
        let n = (last - first + 1) as usize;
        let mut got: Vec<Option<Bytes>> = vec![None; n];
        loop {
            for (i, slot) in got.iter_mut().enumerate() {
                if slot.is_none() {
                    let index = first + i as u64;
                    let hot_key = (key.to_string(), index);
                    *slot = if let Some(b) = self.hot.get(&hot_key) {
                        Some(b)
                    } else {
                        // A prefetch reads and checks cached pieces too, so the read
                        // that follows finds them in memory instead of waiting on the
                        // disk and the checksum.
                        let data = self.cache.get(key, index).map(|p| p.data);
                        if let Some(d) = &data {
                            self.hot.insert(hot_key, d.clone());
                        }
                        data
                    };
                }
            }
            let missing: Vec<u64> = (0..n)
                .filter(|&i| got[i].is_none())
                .map(|i| first + i as u64)
                .collect();
            if missing.is_empty() {
                break;
            }
            // Claim what nobody is fetching; wait for the rest.
            let mut fetching = lock(&self.fetching);
            let (mine, theirs): (Vec<u64>, Vec<u64>) = missing
                .iter()
                .partition(|&&i| !fetching.contains(&(key.to_string(), i)));
            for &i in &mine {
                fetching.insert((key.to_string(), i));
            }
            drop(fetching);
            let claim = Claim {
                inner: self,
                key: key.to_string(),
                pieces: mine,
            };
            for (index, data) in self.fetch(key, size, &claim.pieces)? {
                self.cache.put(key, index, size, &data);
                self.hot.insert((key.to_string(), index), data.clone());
                got[(index - first) as usize] = Some(data);
            }
            drop(claim);
            if !theirs.is_empty() {
                let mut fetching = lock(&self.fetching);
                while theirs
                    .iter()
                    .any(|&i| fetching.contains(&(key.to_string(), i)))
                {
                    // Each fetch ends (answer, error or the client's retry timeout),
                    // and its claim's drop wakes us; the timeout only re-checks.
                    fetching = self
                        .fetched
                        .wait_timeout(fetching, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            // The pieces others fetched are in the cache now (or, if it evicted them
            // already, this read claims them on the next round).
        }
        if keep {
            Ok(got.into_iter().flatten().collect())
        } else {
            Ok(Vec::new())
        }
    }

    /// Fetch `pieces` (sorted) of `key`: runs of neighbouring pieces become one GET of
    /// at most [`MAX_REQUEST`] bytes, [`IN_FLIGHT`] at a time.
    fn fetch(&self, key: &str, size: u64, pieces: &[u64]) -> Result<Vec<(u64, Bytes)>> {
        if pieces.is_empty() {
            return Ok(Vec::new());
        }
        let per_request = (MAX_REQUEST / PIECE_SIZE).max(1);
        let mut runs: Vec<(u64, u64)> = Vec::new(); // (first piece, count)
        for &p in pieces {
            match runs.last_mut() {
                Some((f, c)) if *f + *c == p && *c < per_request => *c += 1,
                _ => runs.push((p, 1)),
            }
        }
        let requests: Vec<(u64, Range<u64>)> = runs
            .into_iter()
            .map(|(f, c)| (f, f * PIECE_SIZE..((f + c) * PIECE_SIZE).min(size)))
            .collect();
        for (_, r) in &requests {
            self.cache.count_request(r.end - r.start);
        }
        let (store, path) = (self.store.clone(), self.path(key)?);
        let answers = self.bridge.run(async move {
            stream::iter(requests)
                .map(|(first, r)| {
                    let (store, path) = (store.clone(), path.clone());
                    async move {
                        let want = r.end - r.start;
                        let b = store.get_range(&path, r).await?;
                        Ok::<_, object_store::Error>((first, want, b))
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<Vec<_>>()
                .await
        })?;
        let answers = answers.map_err(|e| store_error(self.what("reading", key), e))?;
        let mut out = Vec::with_capacity(pieces.len());
        for (first, want, bytes) in answers {
            if bytes.len() as u64 != want {
                return Err(Error::corrupt(format!(
                    "{}: {} bytes where {want} were asked for (the object is shorter than its size)",
                    self.what("reading", key),
                    bytes.len()
                )));
            }
            let mut at = 0usize;
            let mut index = first;
            while at < bytes.len() {
                let end = (at + PIECE_SIZE as usize).min(bytes.len());
                out.push((index, bytes.slice(at..end)));
                at = end;
                index += 1;
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        check_key(key)?;
        if !cacheable(key) {
            return self.read_direct(key, range);
        }
        let size = self.size_of(key)?;
        let r = range.unwrap_or(0..size);
        if r.start > r.end || r.end > size {
            return Err(Error::corrupt(format!(
                "object {key} is {size} bytes, wanted range {}..{}",
                r.start, r.end
            )));
        }
        if r.start == r.end {
            return Ok(Bytes::new());
        }
        let (first, last) = (r.start / PIECE_SIZE, (r.end - 1) / PIECE_SIZE);
        let pieces = self.pieces(key, size, first, last, true)?;
        let base = first * PIECE_SIZE;
        let (from, to) = ((r.start - base) as usize, (r.end - base) as usize);
        if let [one] = pieces.as_slice() {
            return Ok(one.slice(from..to));
        }
        let mut out = BytesMut::with_capacity(to - from);
        let mut at = 0usize;
        for p in pieces {
            let (lo, hi) = (from.max(at), to.min(at + p.len()));
            if lo < hi {
                out.extend_from_slice(&p[lo - at..hi - at]);
            }
            at += p.len();
        }
        Ok(out.freeze())
    }

    fn write(&self, key: &str, data: Bytes) -> Result<()> {
        check_key(key)?;
        let (store, path) = (self.store.clone(), self.path(key)?);
        let put = self.bridge.run(upload(store, path, data.clone()))?;
        put.map_err(|e| store_error(self.what("writing", key), e))?;
        if cacheable(key) {
            self.keep_written(key, &data);
        }
        Ok(())
    }

    /// Read from the object store alone, bypassing the cache.
    fn read_direct(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        let whole = self
            .bridge
            .run(async move { store.get(&path).await?.bytes().await })?
            .map_err(|e| store_error(self.what("reading", key), e))?;
        slice_range(key, whole, range)
    }

    /// What this host wrote, it will read again (its own index, its packs' blocks for
    /// the next deduplicated create): written through into the cache.
    fn keep_written(&self, key: &str, data: &Bytes) {
        let size = data.len() as u64;
        let mut at = 0usize;
        let mut index = 0u64;
        while at < data.len() {
            let end = (at + PIECE_SIZE as usize).min(data.len());
            self.cache.put(key, index, size, &data[at..end]);
            self.hot
                .insert((key.to_string(), index), data.slice(at..end));
            at = end;
            index += 1;
        }
        lock(&self.sizes).insert(key.to_string(), size);
    }

    /// Start uploading `data` as `key` and return: [`Backend::sync`] waits for it (and
    /// fails if it failed). At most [`UPLOADS`] run at once; a further one waits here.
    /// The bytes are in the cache from now on, so this host reads them before they
    /// reach the object store; nothing else can, since nothing names them before the
    /// sync that the store does before writing the index file that names them.
    fn write_behind(self: &Arc<Self>, key: &str, data: Bytes) -> Result<()> {
        check_key(key)?;
        let path = self.path(key)?;
        {
            let mut p = lock(&self.uploads);
            while p.running >= UPLOADS {
                p = self.uploaded.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            p.running += 1;
        }
        self.keep_written(key, &data);
        let (inner, key) = (Arc::clone(self), key.to_string());
        let store = self.store.clone();
        let size = data.len() as u64;
        let started = self.bridge.spawn(async move {
            let result = upload(store, path, data).await;
            if let Err(e) = &result {
                // Never uploaded: the cached copy names nothing and goes.
                inner.cache.remove_object(&key, size);
                lock(&inner.sizes).remove(&key);
                let mut p = lock(&inner.uploads);
                p.failed
                    .get_or_insert_with(|| format!("{}: {e}", inner.what("writing", &key)));
            }
            let mut p = lock(&inner.uploads);
            p.running -= 1;
            drop(p);
            inner.uploaded.notify_all();
        });
        if let Err(e) = started {
            let mut p = lock(&self.uploads);
            p.running -= 1;
            drop(p);
            self.uploaded.notify_all();
            return Err(e);
        }
        Ok(())
    }

    /// Wait for every upload started by [`Inner::write_behind`]; the first failure, if any.
    fn wait_uploads(&self) -> Result<()> {
        let mut p = lock(&self.uploads);
        while p.running > 0 {
            p = self.uploaded.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        match p.failed.take() {
            Some(e) => Err(Error::new(ErrorKind::Io, e)),
            None => Ok(()),
        }
    }
}

/// Put `body` at `path`: in one request, or as a multipart upload with its parts in
/// flight together when it is larger than [`PART_SIZE`].
async fn upload(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    body: Bytes,
) -> std::result::Result<(), object_store::Error> {
    if body.len() <= PART_SIZE {
        return store.put(&path, PutPayload::from(body)).await.map(|_| ());
    }
    let mut upload = store.put_multipart(&path).await?;
    let parts: Vec<_> = (0..body.len())
        .step_by(PART_SIZE)
        .map(|at| {
            let part = body.slice(at..(at + PART_SIZE).min(body.len()));
            upload.put_part(PutPayload::from(part))
        })
        .collect();
    let sent = stream::iter(parts)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await;
    match sent {
        Ok(_) => upload.complete().await.map(|_| ()),
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

/// A pack being written: kept in memory, uploaded behind the writer once named.
struct Upload {
    inner: Arc<Inner>,
    buf: Vec<u8>,
}

impl PartialObject for Upload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>, key: &str) -> Result<()> {
        let Upload { inner, buf } = *self;
        inner.write_behind(key, Bytes::from(buf))
    }
}

impl Backend for RemoteBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.write(key, Bytes::copy_from_slice(data))
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.inner.read(key, range)
    }

    fn evict(&self, key: &str) -> bool {
        if check_key(key).is_err() || !cacheable(key) {
            return false;
        }
        let inner = &self.inner;
        let Ok(size) = inner.size_of(key) else {
            return false;
        };
        for index in 0..size.div_ceil(PIECE_SIZE).max(1) {
            inner.hot.remove(&(key.to_string(), index));
        }
        inner.cache.drop_damaged(key, size);
        // What was read may have come from memory (the hot pieces) as well as from
        // files: the next read fetches from the object store either way.
        true
    }

    fn size(&self, key: &str) -> Result<u64> {
        check_key(key)?;
        if !cacheable(key) {
            return Ok(self.inner.read_direct(key, None)?.len() as u64);
        }
        self.inner.size_of(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let inner = &self.inner;
        let dir = prefix.trim_end_matches('/');
        let under = match (inner.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(inner.path(dir)?),
            (false, true) => Some(
                ObjectPath::parse(&inner.prefix)
                    .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?,
            ),
            (false, false) => Some(inner.path(dir)?),
        };
        let store = inner.store.clone();
        let found = inner
            .bridge
            .run(async move { store.list(under.as_ref()).try_collect::<Vec<_>>().await })?
            .map_err(|e| store_error(format!("listing {prefix} in {}", inner.name), e))?;
        let strip = if inner.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", inner.prefix)
        };
        let mut out: Vec<ObjectMeta> = found
            .into_iter()
            .filter_map(|m| {
                let key = m
                    .location
                    .as_ref()
                    .strip_prefix(strip.as_str())?
                    .to_string();
                key.starts_with(prefix)
                    .then_some(ObjectMeta { key, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let inner = &self.inner;
        let (store, path) = (inner.store.clone(), inner.path(key)?);
        match inner.bridge.run(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(inner.what("deleting", key), e)),
        }
        let size = lock(&inner.sizes)
            .remove(key)
            .or_else(|| inner.cache.get(key, 0).map(|p| p.object_size));
        if let Some(size) = size {
            inner.cache.remove_object(key, size);
            for index in 0..size.div_ceil(PIECE_SIZE) {
                inner.hot.remove(&(key.to_string(), index));
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // A put is durable once the object store has answered it; packs named by
        // `finish` are once their uploads have.
        self.inner.wait_uploads()
    }

    fn locks(&self) -> &dyn Locks {
        &*self.inner.locks
    }

    fn create(&self, prefix: &str) -> Result<Box<dyn PartialObject + '_>> {
        check_prefix(prefix)?;
        // The key is the pack's hash, known only at the end; a pack is bounded by the
        // store's pack size, so it is kept in memory, and uploaded (in parts) behind
        // the writer once named.
        Ok(Box::new(Upload {
            inner: Arc::clone(&self.inner),
            buf: Vec::new(),
        }))
    }

    fn prefetch(&self, key: &str, ranges: &[Range<u64>]) {
        if check_key(key).is_err() || ranges.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        if inner.prefetching.fetch_add(1, Ordering::AcqRel) >= IN_FLIGHT {
            // Enough is being fetched already; the reads will fetch the rest.
            inner.prefetching.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let (key, ranges) = (key.to_string(), ranges.to_vec());
        // On a thread of its own: a read that finds a piece in flight waits for it
        // instead of fetching it again. Only a hint, so errors are dropped.
        let spawned = std::thread::Builder::new()
            .name("stasis-s3-prefetch".into())
            .spawn({
                let inner = inner.clone();
                move || {
                    if let Ok(size) = inner.size_of(&key) {
                        for r in ranges {
                            let end = r.end.min(size);
                            if r.start < end {
                                let (first, last) = (r.start / PIECE_SIZE, (end - 1) / PIECE_SIZE);
                                let _ = inner.pieces(&key, size, first, last, false);
                            }
                        }
                    }
                    inner.prefetching.fetch_sub(1, Ordering::AcqRel);
                }
            });
        if let Err(e) = spawned {
            inner.prefetching.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("prefetch not started: {e}");
        }
    }
}
