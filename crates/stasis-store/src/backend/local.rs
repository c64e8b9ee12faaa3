//! A backend in a local directory.
//!
//! `put` writes `<dir>/.tmp-*`, fdatasyncs it, and renames it to its key, so an object is
//! whole or absent after a crash; `sync` fsyncs every directory touched since the last
//! sync, which makes the renames (and deletes) durable. An object written in pieces
//! ([`Backend::create`]) is the same temporary file, appended to as pieces come, with
//! the kernel asked to start writing each piece back right away, so that its final
//! fdatasync waits only for the last ones. Reads map the object with mmap
//! (objects are immutable once put) and keep a bounded number of maps open.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, flock};

use super::{Backend, Bytes, ObjectMeta, PartialObject, check_key, check_prefix, slice_range};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::lock::{FileLocks, Locks};

const TMP_PREFIX: &str = ".tmp-";

/// Objects as files under a root directory.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    dirty_dirs: Mutex<BTreeSet<PathBuf>>,
    maps: quick_cache::sync::Cache<String, Bytes>,
    tmp_counter: AtomicU64,
    locks: FileLocks,
}

/// Where a local backend keeps its lock files (hidden from `list`).
pub const LOCK_DIR: &str = ".locks";

impl LocalBackend {
    /// A backend rooted at `root`, which must exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let md = fs::metadata(&root).ctx(|| format!("opening {}", root.display()))?;
        if !md.is_dir() {
            return Err(Error::new(
                ErrorKind::Repository,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(LocalBackend {
            locks: FileLocks::new(root.join(LOCK_DIR)),
            root,
            dirty_dirs: Mutex::new(BTreeSet::new()),
            maps: quick_cache::sync::Cache::new(512),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn mark_dirty(&self, dir: PathBuf) {
        self.dirty_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir);
    }

    /// Create `dir` and any missing parents, marking the parents of new ones dirty.
    fn make_dirs(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dirs(parent)?;
            match fs::create_dir(dir) {
                Ok(()) => self.mark_dirty(parent.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
            }
        }
        Ok(())
    }

    fn map(&self, key: &str) -> Result<Bytes> {
        if let Some(b) = self.maps.get(key) {
            return Ok(b);
        }
        let path = self.path(key)?;
        let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        let bytes = if len == 0 {
            Bytes::new()
        } else {
            // SAFETY: objects are immutable once put (written to a temporary name, then
            // renamed); nothing in stasis writes to or truncates a stored object.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .ctx(|| format!("mapping {}", path.display()))?;
            Bytes::from_owner(map)
        };
        self.maps.insert(key.to_string(), bytes.clone());
        Ok(bytes)
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Temporaries and the lock directory are not objects.
            if name.starts_with('.') {
                continue;
            }
            let key = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().ctx(|| format!("stat {key}"))?;
            if ft.is_dir() {
                self.walk(&entry.path(), &key, out)?;
            } else if ft.is_file() && check_key(&key).is_ok() {
                let size = entry.metadata().ctx(|| format!("stat {key}"))?.len();
                out.push(ObjectMeta { key, size });
            }
        }
        Ok(())
    }

    /// A new temporary file in `dir` (`.tmp-<pid>-<n>`), open for writing and locked.
    /// The lock is held until the file is closed, after its rename or removal: it tells
    /// gc the writer is alive (`remove_if_stale`). Where locks are not supported gc
    /// cannot take it either, and leaves the file.
    fn temporary(&self, dir: &Path) -> Result<(PathBuf, File)> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        let _ = flock(&file, FlockOperation::NonBlockingLockExclusive);
        Ok((tmp, file))
    }

    /// The writer's pid in a temporary's name (`.tmp-<pid>-<n>`); `None` for any
    /// other name.
    fn temporary_pid(name: &str) -> Option<u32> {
        name.strip_prefix(TMP_PREFIX)?
            .split('-')
            .next()?
            .parse::<u32>()
            .ok()
    }

    /// Remove the temporary at `path`, written by process `pid`, if it is a crashed
    /// writer's; whether it was removed. Every writer holds an exclusive `flock` on its
    /// temporary until it renames or removes it, and the kernel drops that lock when
    /// the writer dies, however it dies and from whatever pid namespace it ran. So a
    /// temporary is a crashed writer's only if this lock can be taken, and, to be sure
    /// on filesystems with odd locking, its pid is not a live process here and it has
    /// not changed for [`STALE_TEMPORARY`]. A file that vanished meanwhile (renamed by
    /// its writer) or that cannot be opened or locked is left alone.
    fn remove_if_stale(path: &Path, pid: u32) -> std::io::Result<bool> {
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(false);
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let old = file
            .metadata()?
            .modified()?
            .elapsed()
            .is_ok_and(|age| age >= STALE_TEMPORARY);
        if !old || flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(false);
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// How long a temporary file of a process that is gone stays before gc removes it.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(600);

/// A temporary file that becomes an object when finished ([`Backend::create`]).
#[derive(Debug)]
struct LocalPartial<'a> {
    backend: &'a LocalBackend,
    file: File,
    tmp: PathBuf,
    /// Bytes written so far.
    len: u64,
    /// Where writeback was last started.
    started: u64,
    /// Set once renamed to its key: nothing to remove on drop.
    done: bool,
}

/// Start writeback once this much is written past where it was last started.
const WRITEBACK_STEP: u64 = 4 << 20;

impl PartialObject for LocalPartial<'_> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .ctx(|| format!("writing {}", self.tmp.display()))?;
        self.len += data.len() as u64;
        if self.len - self.started >= WRITEBACK_STEP {
            // Start (not wait for) writeback of what was written: the disk is busy
            // while blocks still arrive instead of all at the final fdatasync. Only a
            // hint, so an error here is ignored; the fdatasync reports real ones.
            // SAFETY: the descriptor is open for the whole call; sync_file_range reads
            // nothing from memory.
            let _ = unsafe {
                libc::sync_file_range(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    self.started as libc::off64_t,
                    (self.len - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.started = self.len;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, key: &str) -> Result<()> {
        let b = self.backend;
        let path = b.path(key)?;
        let dir = path.parent().unwrap_or(&b.root).to_path_buf();
        b.make_dirs(&dir)?;
        self.file
            .sync_data()
            .ctx(|| format!("fdatasync {}", self.tmp.display()))?;
        fs::rename(&self.tmp, &path).ctx(|| format!("writing {}", path.display()))?;
        self.done = true;
        b.maps.remove(key);
        // The rename changed both directories; the temporary's may be another one.
        if let Some(from) = self.tmp.parent().filter(|p| *p != dir) {
            b.mark_dirty(from.to_path_buf());
        }
        b.mark_dirty(dir);
        Ok(())
    }
}

impl Drop for LocalPartial<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Backend for LocalBackend {
    fn remove_stale_temporaries(&self) -> Result<u64> {
        // Creates run meanwhile: a temporary listed here may be renamed away before it
        // is looked at, so a name that is gone is skipped, never an error. Only names of
        // temporaries are ever opened.
        fn go(dir: &Path, n: &mut u64) -> std::io::Result<()> {
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if let Some(pid) = LocalBackend::temporary_pid(&name) {
                    if LocalBackend::remove_if_stale(&entry.path(), pid)? {
                        *n += 1;
                    }
                    continue;
                }
                let ft = match entry.file_type() {
                    Ok(ft) => ft,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                };
                if ft.is_dir() && name != LOCK_DIR {
                    go(&entry.path(), n)?;
                }
            }
            Ok(())
        }
        let mut n = 0;
        go(&self.root, &mut n).ctx(|| "removing crashed writers' temporary files".to_string())?;
        Ok(n)
    }

    fn create(&self, prefix: &str) -> Result<Box<dyn PartialObject + '_>> {
        // The temporary lives in the prefix's directory, on the same filesystem as the
        // key it will be renamed to.
        check_prefix(prefix)?;
        let dir = self.root.join(prefix);
        self.make_dirs(&dir)?;
        let (tmp, file) = self.temporary(&dir)?;
        Ok(Box::new(LocalPartial {
            backend: self,
            file,
            tmp,
            len: 0,
            started: 0,
            done: false,
        }))
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.make_dirs(&dir)?;
        let (tmp, mut f) = self.temporary(&dir)?;
        let result = (|| -> std::io::Result<()> {
            f.write_all(data)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        self.maps.remove(key);
        self.mark_dirty(dir);
        Ok(())
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let whole = self.map(key)?;
        slice_range(key, whole, range)
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key)?;
        Ok(fs::metadata(&path)
            .ctx(|| format!("stat {}", path.display()))?
            .len())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Start the walk at the deepest directory the prefix names.
        let (dir_rel, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        if !dir_rel.is_empty() {
            check_key(dir_rel)?;
        }
        let mut out = Vec::new();
        self.walk(&self.root.join(dir_rel), dir_rel, &mut out)?;
        out.retain(|m| m.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        self.maps.remove(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("deleting {}", path.display()), e)),
        }
        self.mark_dirty(path.parent().unwrap_or(&self.root).to_path_buf());
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirty_dirs.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs {
            let f = File::open(&dir).ctx(|| format!("opening {}", dir.display()))?;
            f.sync_all().ctx(|| format!("fsync {}", dir.display()))?;
        }
        Ok(())
    }

    fn prefetch(&self, key: &str, ranges: &[Range<u64>]) {
        // posix_fadvise(WILLNEED) starts readahead of each range into the page cache,
        // which the pack's mapping then reads without waiting on the disk. Linux reads
        // at most max(read_ahead_kb, max_sectors_kb) of one call and drops the rest (an
        // 8 MiB cap here left three quarters of a 32 MiB range unread), so the ranges
        // go in pieces no larger than the smallest such cap (128 KiB). Only a hint:
        // errors are ignored.
        const PIECE: u64 = 128 << 10;
        let Ok(path) = self.path(key) else { return };
        let Ok(file) = File::open(&path) else { return };
        for r in ranges {
            let mut at = r.start;
            while at < r.end {
                let end = r.end.min(at.saturating_add(PIECE));
                if let Some(len) = std::num::NonZeroU64::new(end - at) {
                    let _ = rustix::fs::fadvise(&file, at, Some(len), rustix::fs::Advice::WillNeed);
                }
                at = end;
            }
        }
    }

    fn locks(&self) -> &dyn Locks {
        &self.locks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::open(dir.path()).expect("open");
        super::super::tests::conformance(&b);
    }

    #[test]
    fn temporaries_are_invisible_and_only_crashed_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::open(dir.path()).expect("open");
        b.put("packs/aa/one", b"x").expect("put");
        // A process that is gone: one that ran and was waited for.
        let dead = std::process::Command::new("true")
            .spawn()
            .and_then(|mut c| c.wait().map(|_| c.id()))
            .expect("run true");
        let long_ago = std::time::SystemTime::now() - 2 * STALE_TEMPORARY;
        let make = |name: &str, old: bool| {
            let p = dir.path().join("packs").join(name);
            fs::write(&p, b"junk").expect("write");
            if old {
                let f = File::options().write(true).open(&p).expect("open");
                f.set_modified(long_ago).expect("set mtime");
            }
            p
        };
        let crashed = make(&format!("{TMP_PREFIX}{dead}-1"), true);
        let fresh = make(&format!("{TMP_PREFIX}{dead}-2"), false);
        let ours = make(&format!("{TMP_PREFIX}{}-3", std::process::id()), true);
        let odd = make(&format!("{TMP_PREFIX}x-4"), true);
        // A writer whose pid is not seen here (another pid namespace) but who holds
        // its temporary's lock, as every writer does, is alive.
        let locked = make(&format!("{TMP_PREFIX}{dead}-5"), true);
        let holder = File::open(&locked).expect("open");
        flock(&holder, FlockOperation::NonBlockingLockExclusive).expect("lock");
        assert_eq!(b.list("").expect("list").len(), 1);
        assert_eq!(b.remove_stale_temporaries().expect("rm"), 1);
        assert!(!crashed.exists());
        assert!(fresh.exists() && ours.exists() && odd.exists() && locked.exists());
        drop(holder);
        assert_eq!(b.remove_stale_temporaries().expect("rm"), 1);
        assert!(!locked.exists());
        // A temporary renamed away by its writer between the listing and the look.
        let renamed = dir
            .path()
            .join("packs")
            .join(format!("{TMP_PREFIX}{dead}-6"));
        assert!(!LocalBackend::remove_if_stale(&renamed, dead).expect("gone is no error"));
        assert_eq!(b.list("").expect("list").len(), 1);
    }
}
