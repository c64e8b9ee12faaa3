//! The host's cache of object pieces: files under a directory, least recently used out
//! first, within a byte budget (see the crate doc for the layout and the rules).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use stasis_store::{Error, Result};

use crate::piece::{Piece, decode_piece, encode_piece};

/// What the cache holds and how it has served, for `stasis cache stats` and `stasis du`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// The cache's directory.
    pub dir: PathBuf,
    /// Its budget in bytes.
    pub budget: u64,
    /// Pieces on disk.
    pub pieces: u64,
    /// Their bytes on disk (headers included).
    pub bytes: u64,
    /// Pieces served from the cache, since the counters were started.
    pub hits: u64,
    /// Pieces that had to be fetched.
    pub misses: u64,
    /// Cache files found damaged and removed (each was fetched again).
    pub dropped: u64,
    /// Requests sent to the object store for reads.
    pub requests: u64,
    /// Bytes fetched from the object store.
    pub fetched: u64,
}

#[derive(Debug, Default)]
struct State {
    /// File name -> (bytes on disk, last use).
    files: HashMap<String, (u64, u64)>,
    /// Last use -> file name.
    lru: BTreeMap<u64, String>,
    tick: u64,
    total: u64,
}

impl State {
    fn touch(&mut self, name: &str, size: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((old_size, old_tick)) = self.files.insert(name.to_string(), (size, tick)) {
            self.lru.remove(&old_tick);
            self.total -= old_size;
        }
        self.lru.insert(tick, name.to_string());
        self.total += size;
    }

    fn forget(&mut self, name: &str) {
        if let Some((size, tick)) = self.files.remove(name) {
            self.lru.remove(&tick);
            self.total -= size;
        }
    }
}

/// Counters that live in `DIR/counters` across processes (added to at drop).
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    dropped: AtomicU64,
    requests: AtomicU64,
    fetched: AtomicU64,
}

/// The cache of one host (one directory, shared by its processes).
#[derive(Debug)]
pub struct PieceCache {
    dir: PathBuf,
    budget: u64,
    piece_size: u64,
    state: Mutex<State>,
    counters: Counters,
    /// The last use stamped on a file by this process (see [`PieceCache::stamp`]).
    last_stamp: Mutex<SystemTime>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

fn random_hex() -> Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map_err(|e| Error::new(stasis_store::ErrorKind::Io, format!("random: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

const COUNTERS: &str = "counters";

impl PieceCache {
    /// Open (or create) the cache in `dir`, keeping at most about `budget` bytes of
    /// pieces of `piece_size` bytes.
    pub fn open(dir: &Path, budget: u64, piece_size: u64) -> Result<Self> {
        for d in ["pieces", "tmp"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
        }
        let cache = PieceCache {
            dir: dir.to_path_buf(),
            budget,
            piece_size,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            last_stamp: Mutex::new(SystemTime::UNIX_EPOCH),
        };
        cache.remove_stale_temporaries();
        cache.rescan()?;
        Ok(cache)
    }

    /// The size pieces are cut at.
    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is still a valid (if
        // stale) view of the directory.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time to record as a file's last use: now, to the nanosecond (set explicitly:
    /// the kernel's own mtimes are only as fine as its clock tick), and always after the
    /// previous stamp of this process, so its order of uses is the order of the mtimes.
    fn stamp(&self) -> SystemTime {
        let mut last = self.last_stamp.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now().max(*last + std::time::Duration::from_nanos(1));
        *last = now;
        now
    }

    fn name(key: &str, index: u64) -> String {
        let h = blake3::hash(key.as_bytes()).to_hex();
        format!("{}-{index}", &h[..32])
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join("pieces").join(&name[..2]).join(name)
    }

    /// Temporaries of processes that are gone (named `<pid>-<random>`).
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(self.dir.join("tmp")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(p, _)| p.parse::<i32>().ok());
            if pid.is_none_or(|p| !process_alive(p)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Rebuild the view of what is on disk (every process's pieces), oldest use first.
    fn rescan(&self) -> Result<()> {
        let root = self.dir.join("pieces");
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        let top = fs::read_dir(&root).map_err(io(format!("listing {}", root.display())))?;
        for sub in top.flatten() {
            let Ok(entries) = fs::read_dir(sub.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let (Ok(meta), Some(name)) =
                    (e.metadata(), e.file_name().to_str().map(String::from))
                else {
                    continue;
                };
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((used, name, meta.len()));
            }
        }
        found.sort();
        let mut st = self.state();
        *st = State::default();
        for (_, name, size) in found {
            st.touch(&name, size);
        }
        Ok(())
    }

    /// Piece `index` of object `key`, if the cache has it whole and undamaged. A damaged
    /// file is removed (and counted), so the caller fetches the piece again.
    pub fn get(&self, key: &str, index: u64) -> Option<Piece> {
        let name = Self::name(key, index);
        let path = self.path(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(_) => {
                self.state().forget(&name);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        // Mapped, not read: the piece is served from the page cache without a copy.
        // SAFETY: cache files are never truncated or written in place (a new version
        // is renamed over the name and a damaged one unlinked, which leaves this
        // mapping's inode whole), so the mapping stays valid for as long as it lives.
        let mapped = unsafe { memmap2::Mmap::map(&file) };
        let (size, piece) = match mapped {
            Ok(m) => {
                let size = m.len() as u64;
                let piece = decode_piece(Bytes::from_owner(m), self.piece_size)
                    .ok()
                    .filter(|p| p.key == key && p.index == index);
                (size, piece)
            }
            Err(_) => (0, None),
        };
        match piece {
            Some(p) => {
                // The mtime is the last use, for the order after a restart and for the
                // other processes of this host.
                let _ = file.set_modified(self.stamp());
                self.state().touch(&name, size);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            None => {
                // Of readers that found the same damaged file, the one that removes it
                // counts it.
                if fs::remove_file(&path).is_ok() {
                    tracing::warn!(path = %path.display(), "damaged cache file removed");
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                self.state().forget(&name);
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keep `data` as piece `index` of `key` (an object of `object_size` bytes). The
    /// cache is a copy: failing to write it loses nothing, so errors are only logged.
    pub fn put(&self, key: &str, index: u64, object_size: u64, data: &[u8]) {
        if let Err(e) = self.try_put(key, index, object_size, data) {
            tracing::warn!(key, index, "not cached: {e}");
        }
    }

    fn try_put(&self, key: &str, index: u64, object_size: u64, data: &[u8]) -> Result<()> {
        let name = Self::name(key, index);
        let path = self.path(&name);
        let bytes = encode_piece(key, index, object_size, data);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{}", std::process::id(), random_hex()?));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.set_modified(self.stamp())?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("caching {}", path.display()), e));
        }
        let over = {
            let mut st = self.state();
            st.touch(&name, bytes.len() as u64);
            st.total > self.budget
        };
        if over {
            self.evict()?;
        }
        Ok(())
    }

    /// Remove the least recently used pieces (of every process) down to 90 % of the budget.
    fn evict(&self) -> Result<()> {
        self.rescan()?;
        let target = self.budget / 10 * 9;
        let mut st = self.state();
        while st.total > target {
            let Some((_, name)) = st.lru.pop_first() else {
                break;
            };
            if let Some((size, _)) = st.files.remove(&name) {
                st.total -= size;
            }
            let _ = fs::remove_file(self.path(&name));
        }
        Ok(())
    }

    /// Remove every piece of `key` (an object of `object_size` bytes), when it is deleted.
    pub fn remove_object(&self, key: &str, object_size: u64) {
        self.remove_pieces(key, object_size);
    }

    /// Remove every piece of `key` because bytes read from them failed the store's
    /// checks; counted as dropped. How many files there were.
    pub fn drop_damaged(&self, key: &str, object_size: u64) -> u64 {
        let n = self.remove_pieces(key, object_size);
        if n > 0 {
            tracing::warn!(key, pieces = n, "cached pieces failed a check: dropped");
            self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        }
        n
    }

    fn remove_pieces(&self, key: &str, object_size: u64) -> u64 {
        let pieces = object_size.div_ceil(self.piece_size.max(1));
        let mut removed = 0;
        for index in 0..pieces.max(1) {
            let name = Self::name(key, index);
            if fs::remove_file(self.path(&name)).is_ok() {
                removed += 1;
            }
            self.state().forget(&name);
        }
        removed
    }

    /// Remove every piece.
    pub fn clear(&self) -> Result<()> {
        let root = self.dir.join("pieces");
        fs::remove_dir_all(&root).map_err(io(format!("removing {}", root.display())))?;
        fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        *self.state() = State::default();
        Ok(())
    }

    /// Count a read request of `bytes` sent to the object store.
    pub(crate) fn count_request(&self, bytes: u64) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The counters saved by earlier processes, and this process's since it opened.
    fn saved_counters(&self) -> [u64; 5] {
        let text = fs::read_to_string(self.dir.join(COUNTERS)).unwrap_or_default();
        let mut out = [0u64; 5];
        for (slot, word) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = word.parse().unwrap_or(0);
        }
        out
    }

    fn own_counters(&self) -> [u64; 5] {
        let c = &self.counters;
        [&c.hits, &c.misses, &c.dropped, &c.requests, &c.fetched].map(|a| a.load(Ordering::Relaxed))
    }

    /// What is on disk now, and the counters of every process so far.
    pub fn stats(&self) -> Result<CacheStats> {
        self.rescan()?;
        let st = self.state();
        let (saved, own) = (self.saved_counters(), self.own_counters());
        let sum = |i: usize| saved[i].saturating_add(own[i]);
        Ok(CacheStats {
            dir: self.dir.clone(),
            budget: self.budget,
            pieces: st.files.len() as u64,
            bytes: st.total,
            hits: sum(0),
            misses: sum(1),
            dropped: sum(2),
            requests: sum(3),
            fetched: sum(4),
        })
    }

    /// Add this process's counters to the saved ones, under a lock, and start again.
    fn save_counters(&self) -> Result<()> {
        let own = self.own_counters();
        if own.iter().all(|&n| n == 0) {
            return Ok(());
        }
        let lock_path = self.dir.join("counters.lock");
        let lock =
            File::create(&lock_path).map_err(io(format!("opening {}", lock_path.display())))?;
        // SAFETY: flock on a descriptor we own; it is released when `lock` closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                "locking the cache counters",
                std::io::Error::last_os_error(),
            ));
        }
        let saved = self.saved_counters();
        let text: Vec<String> = (0..5)
            .map(|i| saved[i].saturating_add(own[i]).to_string())
            .collect();
        let tmp = self.dir.join(format!("counters.{}", std::process::id()));
        fs::write(&tmp, text.join(" ") + "\n").map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, self.dir.join(COUNTERS))
            .map_err(io("saving the cache counters".into()))?;
        let c = &self.counters;
        for (a, n) in [&c.hits, &c.misses, &c.dropped, &c.requests, &c.fetched]
            .into_iter()
            .zip(own)
        {
            a.fetch_sub(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for PieceCache {
    fn drop(&mut self) {
        if let Err(e) = self.save_counters() {
            tracing::warn!("cache counters not saved: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_within_the_budget_and_damage_is_dropped() {
        let d = tempfile::tempdir().expect("tempdir");
        // Each file is 64 + key + 100 bytes; a budget of about 4 files.
        let c = PieceCache::open(d.path(), 4 * 180, 100).expect("open");
        for i in 0..4u64 {
            c.put("packs/aa/x.pack", i, 1000, &[i as u8; 100]);
        }
        assert_eq!(c.stats().expect("stats").pieces, 4);
        // Use piece 0, then add a fifth: the least recently used (1, then 2) go.
        assert!(c.get("packs/aa/x.pack", 0).is_some());
        c.put("packs/aa/x.pack", 4, 1000, &[4; 100]);
        let have: Vec<bool> = (0..5)
            .map(|i| c.get("packs/aa/x.pack", i).is_some())
            .collect();
        assert_eq!(have, [true, false, false, true, true]);
        let s = c.stats().expect("stats");
        assert!(s.bytes <= 4 * 180, "{s:?}");

        // A flipped byte in what the header says: dropped, not served.
        let name = PieceCache::name("packs/aa/x.pack", 3);
        let p = c.path(&name);
        let mut bytes = fs::read(&p).expect("read");
        bytes[9] ^= 1;
        fs::write(&p, &bytes).expect("write");
        assert!(c.get("packs/aa/x.pack", 3).is_none());
        assert!(!p.exists());
        assert_eq!(c.stats().expect("stats").dropped, 1);
        // A file of another key under this name (a collision or a swap) is not served.
        fs::copy(c.path(&PieceCache::name("packs/aa/x.pack", 4)), &p).expect("copy");
        assert!(c.get("packs/aa/x.pack", 3).is_none());

        // The pieces of an object whose bytes failed the store's checks go, all of
        // them (4 of its 10 are here), counted as dropped.
        c.put("packs/aa/x.pack", 3, 1000, &[3; 100]);
        assert_eq!(c.drop_damaged("packs/aa/x.pack", 1000), 3);
        assert!((0..10).all(|i| c.get("packs/aa/x.pack", i).is_none()));
        c.put("packs/aa/x.pack", 4, 1000, &[4; 100]);
        c.put("packs/aa/x.pack", 0, 1000, &[0; 100]);

        // The order survives a restart (mtimes), and the counters are kept.
        drop(c);
        let c = PieceCache::open(d.path(), 4 * 180, 100).expect("open");
        let s = c.stats().expect("stats");
        assert_eq!((s.pieces, s.dropped), (2, 5));
        c.clear().expect("clear");
        assert_eq!(c.stats().expect("stats").pieces, 0);
    }

    #[test]
    fn temporaries_of_dead_processes_go() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("tmp")).expect("mkdir");
        // pid 0x7fffffff does not exist; our own pid does.
        let dead = d.path().join("tmp/2147483647-ab");
        let live = d.path().join(format!("tmp/{}-cd", std::process::id()));
        fs::write(&dead, b"x").expect("write");
        fs::write(&live, b"x").expect("write");
        let _c = PieceCache::open(d.path(), 1 << 20, 100).expect("open");
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
