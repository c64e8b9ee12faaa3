//! A backend in a local directory.
//!
//! `put` writes `<dir>/.tmp-*`, fdatasyncs it, and renames it to its key, so an object is
//! whole or absent after a crash; `sync` fsyncs every directory touched since the last
//! sync, which makes the renames (and deletes) durable. An object written in pieces
//! ([`Backend::create`]) is the same temporary file, appended to as pieces come. Its
//! bytes bypass the page cache where the filesystem allows it: they are gathered in a
//! reused page-aligned buffer and written with `O_DIRECT` in 4 MiB stretches (the last
//! one shorter, but still whole 4 KiB blocks), and only the unaligned tail goes through
//! the page cache before the final fdatasyncs. A
//! snapshot store runs beside the VMs it snapshots, and the pack bytes it writes would
//! otherwise take page cache the VMs' own files need, and cost the writer a copy into
//! freshly allocated pages (see `Direct`). Where `O_DIRECT` is refused, at open or at
//! any write, the object goes on through the page cache, with the kernel asked to
//! start writing each piece back right away so that the final fdatasync waits only
//! for the last ones. Reads map the object with mmap (objects are immutable once put)
//! and keep a bounded number of maps open.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// Whether objects written in pieces try `O_DIRECT` (see the module docs).
    direct_writes: bool,
    /// Staging buffers of objects done with them (finished, fallen back to buffered
    /// writes, or dropped), for the next ones: a fresh one costs the kernel clearing
    /// its pages on first touch.
    stages: Mutex<Vec<memmap2::MmapMut>>,
    /// Set once a direct write was refused as invalid (`EINVAL`: the filesystem or
    /// device does not take `O_DIRECT` writes, or not at this alignment): later
    /// objects are written through the page cache from the start.
    direct_refused: AtomicBool,
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
            direct_writes: true,
            stages: Mutex::new(Vec::new()),
            direct_refused: AtomicBool::new(false),
        })
    }

    /// Whether objects written in pieces go past the page cache with `O_DIRECT` where
    /// the filesystem allows it (the default), or always through it.
    pub fn with_direct_writes(mut self, on: bool) -> Self {
        self.direct_writes = on;
        self
    }

    /// A new object written in pieces, as a temporary in `dir`.
    fn partial(&self, dir: &Path) -> Result<LocalPartial<'_>> {
        let (tmp, file) = self.temporary(dir)?;
        Ok(LocalPartial {
            backend: self,
            direct: self.direct_for(&tmp),
            file,
            tmp,
            len: 0,
            started: 0,
            done: false,
            failed: false,
        })
    }

    /// The direct-I/O side for the temporary at `tmp`, if direct writes are on and the
    /// filesystem accepts `O_DIRECT`.
    fn direct_for(&self, tmp: &Path) -> Option<Direct> {
        if !self.direct_writes || self.direct_refused.load(Ordering::Relaxed) {
            return None;
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(tmp)
            .ok()?;
        let pooled = self.stages.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let stage = match pooled {
            Some(stage) => stage,
            None => memmap2::MmapMut::map_anon(DIRECT_STAGE).ok()?,
        };
        Some(Direct {
            file,
            stage,
            fill: 0,
            written: 0,
        })
    }

    /// Keep `stage` for the next direct writer, unless enough are kept already.
    fn recycle(&self, stage: memmap2::MmapMut) {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        if stages.len() < MAX_SPARE_STAGES {
            stages.push(stage);
        }
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
    /// The temporary, open for buffered writes (and for the final fdatasync).
    file: File,
    tmp: PathBuf,
    /// Bytes taken so far: written, or staged in `direct`.
    len: u64,
    /// Where writeback was last started (buffered writes only).
    started: u64,
    /// Set once renamed to its key: nothing to remove on drop.
    done: bool,
    /// While direct writes work: the bytes from `written` on are staged here.
    direct: Option<Direct>,
    /// Set by any failed write: what was taken may not all be in the file, so the
    /// object refuses further writes and its finish.
    failed: bool,
}

/// The direct-I/O side of a [`LocalPartial`]: a second descriptor of the temporary,
/// opened with `O_DIRECT`, and a page-aligned buffer that gathers bytes until a whole
/// [`DIRECT_STAGE`] can go out at an aligned offset (at the finish, the staged whole
/// 4 KiB blocks go out too).
///
/// Why: a buffered write copies each pack byte into page cache the kernel must first
/// allocate and clear. In a guest whose free memory goes back to its host, that
/// allocation may fault each page in from the host again. Base ingests of the 2 GiB
/// test image there had medians of 0.289 s with buffered packs and 0.245 s with direct
/// ones (docs/measurements/ingest.md, "Direct pack writes").
#[derive(Debug)]
struct Direct {
    file: File,
    stage: memmap2::MmapMut,
    /// Bytes staged, not yet written.
    fill: usize,
    /// Bytes written through `file`: where the staged bytes start, always aligned.
    written: u64,
}

/// Offsets and lengths of direct writes are multiples of this (the largest logical
/// block size in common use; a device that needs more refuses, and the object goes on
/// buffered).
const DIRECT_ALIGN: usize = 4096;
/// A direct write's length, and the staging buffer's size.
const DIRECT_STAGE: usize = 4 << 20;
/// Staging buffers a backend keeps for reuse: a writer has two objects open at most
/// (a data and a tree pack); more writers in one process allocate more.
const MAX_SPARE_STAGES: usize = 4;

impl Direct {
    /// Stage as much of `data` as fits; how many bytes that was.
    fn stage(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(DIRECT_STAGE - self.fill);
        self.stage[self.fill..self.fill + n].copy_from_slice(&data[..n]);
        self.fill += n;
        n
    }

    /// Make what went through this descriptor durable, for filesystems whose fsync
    /// covers one open file rather than the inode (FUSE, SMB), and give the buffer back.
    fn close(self, backend: &LocalBackend) -> std::io::Result<()> {
        let synced = if self.written > 0 {
            self.file.sync_data()
        } else {
            Ok(())
        };
        backend.recycle(self.stage);
        synced
    }

    /// Write the first `n` staged bytes (`n` aligned) and keep the rest staged.
    fn write(&mut self, n: usize) -> std::io::Result<()> {
        debug_assert!(n.is_multiple_of(DIRECT_ALIGN) && n <= self.fill);
        self.file.write_all_at(&self.stage[..n], self.written)?;
        self.stage.copy_within(n..self.fill, 0);
        self.fill -= n;
        self.written += n as u64;
        Ok(())
    }
}

/// Start writeback once this much is written past where it was last started.
const WRITEBACK_STEP: u64 = 4 << 20;

impl LocalPartial<'_> {
    /// Write `n` staged bytes directly. If the write is refused, write everything
    /// staged through the page cache instead and stay there: rewriting bytes a failed
    /// direct write may have put down in part is harmless, and an error that is not
    /// about direct I/O (a full disk, say) comes back from the buffered write or the
    /// final fdatasync.
    fn write_direct(&mut self, n: usize) -> Result<()> {
        let Some(d) = self.direct.as_mut() else {
            return Ok(());
        };
        let Err(e) = d.write(n) else {
            return Ok(());
        };
        if e.raw_os_error() == Some(libc::EINVAL) {
            self.backend.direct_refused.store(true, Ordering::Relaxed);
        }
        self.stop_direct()
    }

    /// Stop writing directly: what is staged goes through the page cache, and the
    /// direct descriptor is synced and closed (`Direct::close`).
    fn stop_direct(&mut self) -> Result<()> {
        if let Some(d) = self.direct.take() {
            let staged = self.file.write_all_at(&d.stage[..d.fill], d.written);
            let closed = d.close(self.backend);
            staged.ctx(|| format!("writing {}", self.tmp.display()))?;
            closed.ctx(|| format!("fdatasync {}", self.tmp.display()))?;
        }
        Ok(())
    }

    /// An error if an earlier write failed (see `failed`).
    fn usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{} failed earlier and is incomplete", self.tmp.display()),
            ));
        }
        Ok(())
    }

    /// Append `data` through the page cache.
    fn write_buffered(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, self.len)
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
}

impl PartialObject for LocalPartial<'_> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.usable()?;
        let r = self.append(data);
        self.failed = r.is_err();
        r
    }

    fn finish(mut self: Box<Self>, key: &str) -> Result<()> {
        self.usable()?;
        let b = self.backend;
        let path = b.path(key)?;
        let dir = path.parent().unwrap_or(&b.root).to_path_buf();
        b.make_dirs(&dir)?;
        // The whole blocks of what is staged go out directly, the tail through the page
        // cache. The fdatasync of the buffered descriptor covers both on local
        // filesystems (it is the same inode); `Direct::close` syncs its own descriptor
        // for filesystems where it does not.
        let aligned = self
            .direct
            .as_ref()
            .map_or(0, |d| d.fill - d.fill % DIRECT_ALIGN);
        if aligned > 0 {
            self.write_direct(aligned)?;
        }
        self.stop_direct()?;
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

impl LocalPartial<'_> {
    /// [`PartialObject::write`], before the bookkeeping of failures.
    fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while let Some(d) = self.direct.as_mut() {
            if data.is_empty() {
                return Ok(());
            }
            let n = d.stage(data);
            data = &data[n..];
            self.len += n as u64;
            if d.fill == DIRECT_STAGE {
                self.write_direct(DIRECT_STAGE)?;
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        self.write_buffered(data)
    }
}

impl Drop for LocalPartial<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.direct.take() {
            self.backend.recycle(d.stage);
        }
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
        Ok(Box::new(self.partial(&dir)?))
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
        for direct in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let b = LocalBackend::open(dir.path())
                .expect("open")
                .with_direct_writes(direct);
            super::super::conformance::conformance(&b);
        }
    }

    /// Whether `dir`'s filesystem accepts `O_DIRECT` (tmpfs on older kernels does not).
    fn takes_direct_io(dir: &Path) -> bool {
        let probe = dir.join("probe");
        let ok = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let _ = fs::remove_file(probe);
        ok
    }

    /// A temporary directory on a disk filesystem where there is one (`/var/tmp`;
    /// `/tmp` may be a tmpfs, which takes `O_DIRECT` differently or not at all).
    fn disk_tempdir() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir")
    }

    /// Bytes that vary with their offset, for `n` bytes from `at`.
    fn pattern(at: usize, n: usize) -> Vec<u8> {
        (at..at + n)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    /// A new object in `b`'s "packs" directory.
    fn packs_partial(b: &LocalBackend) -> LocalPartial<'_> {
        let dir = b.root().join("packs");
        b.make_dirs(&dir).expect("dirs");
        b.partial(&dir).expect("partial")
    }

    /// Pieces of `sizes` bytes, written to a new object through `b` and named
    /// "packs/k": their bytes, in order. With `check_direct`, the object must have
    /// written directly throughout.
    fn write_pieces(b: &LocalBackend, sizes: &[usize], check_direct: bool) -> Vec<u8> {
        let mut p = packs_partial(b);
        let mut all = Vec::new();
        for &n in sizes {
            let piece = pattern(all.len(), n);
            p.write(&piece).expect("write");
            all.extend_from_slice(&piece);
        }
        if check_direct {
            let d = p
                .direct
                .as_ref()
                .expect("direct writes were on and possible");
            assert_eq!(d.written + d.fill as u64, all.len() as u64);
            assert_eq!(d.written as usize, all.len() / DIRECT_STAGE * DIRECT_STAGE);
        }
        Box::new(p).finish("packs/k").expect("finish");
        all
    }

    /// The sizes at the edges: nothing, one block, exactly a stage, a stage and a
    /// block, a tail with no whole block, whole blocks with no tail.
    #[test]
    fn pieces_at_the_edges_read_back_whole() {
        let cases: [&[usize]; 7] = [
            &[],
            &[0, 0],
            &[DIRECT_ALIGN],
            &[DIRECT_STAGE],
            &[2 * DIRECT_STAGE + DIRECT_ALIGN],
            &[DIRECT_STAGE, 100],
            &[DIRECT_STAGE - 1, 1, 3 * DIRECT_ALIGN],
        ];
        for direct in [true, false] {
            for sizes in cases {
                let dir = disk_tempdir();
                let b = LocalBackend::open(dir.path())
                    .expect("open")
                    .with_direct_writes(direct);
                let check = direct && takes_direct_io(dir.path());
                let all = write_pieces(&b, sizes, check);
                let back = b.get("packs/k", None).expect("get");
                assert!(back[..] == all[..], "{sizes:?} (direct {direct}) differs");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        /// Whatever the pieces' sizes, direct or buffered, the object reads back as
        /// their bytes in order, and no temporary is left.
        #[test]
        fn pieces_read_back_whole(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![
                    0usize..5000,
                    DIRECT_STAGE - 4100..DIRECT_STAGE + 4100,
                    1usize..3 * DIRECT_STAGE,
                ],
                0..5,
            ),
            direct: bool,
        ) {
            let dir = disk_tempdir();
            let b = LocalBackend::open(dir.path()).expect("open").with_direct_writes(direct);
            let check = direct && takes_direct_io(dir.path());
            let all = write_pieces(&b, &sizes, check);
            let back = b.get("packs/k", None).expect("get");
            proptest::prop_assert_eq!(back.len(), all.len());
            proptest::prop_assert!(back[..] == all[..]);
            let left: Vec<_> = fs::read_dir(dir.path().join("packs"))
                .expect("list")
                .map(|e| e.expect("entry").file_name())
                .filter(|n| n != "k")
                .collect();
            proptest::prop_assert!(left.is_empty(), "left behind: {left:?}");
        }
    }

    /// A direct write the system refuses (here: through a descriptor open only for
    /// reading) sends the staged bytes and all later ones through the page cache.
    #[test]
    fn a_refused_direct_write_goes_on_buffered() {
        let dir = disk_tempdir();
        let b = LocalBackend::open(dir.path())
            .expect("open")
            .with_direct_writes(false);
        let mut p = packs_partial(&b);
        p.direct = Some(Direct {
            file: File::open(&p.tmp).expect("reopen"),
            stage: memmap2::MmapMut::map_anon(DIRECT_STAGE).expect("map"),
            fill: 0,
            written: 0,
        });
        let first = vec![7u8; DIRECT_STAGE - 10];
        let second: Vec<u8> = (0..DIRECT_STAGE + 33).map(|i| (i % 253) as u8).collect();
        p.write(&first).expect("staged");
        assert!(p.direct.is_some(), "nothing written yet");
        p.write(&second).expect("falls back");
        assert!(p.direct.is_none(), "gave up on direct writes");
        p.write(b"tail").expect("buffered");
        Box::new(p).finish("packs/k").expect("finish");
        let back = b.get("packs/k", None).expect("get");
        let all = [&first[..], &second[..], b"tail"].concat();
        assert!(back[..] == all[..], "object differs from what was written");
        assert_eq!(b.stages.lock().expect("lock").len(), 1, "stage recycled");
    }

    /// Direct writes that work for a while and are then refused, in the finish: what
    /// went out directly stays, the rest goes through the page cache.
    #[test]
    fn a_direct_write_refused_at_the_finish_goes_on_buffered() {
        let dir = disk_tempdir();
        if !takes_direct_io(dir.path()) {
            return; // nothing to refuse later here; the test above covers the fallback
        }
        let b = LocalBackend::open(dir.path()).expect("open");
        let mut p = packs_partial(&b);
        let all = pattern(0, 2 * DIRECT_STAGE + 3 * DIRECT_ALIGN + 5);
        p.write(&all[..DIRECT_STAGE + 7]).expect("one stage out");
        p.write(&all[DIRECT_STAGE + 7..]).expect("two stages out");
        let d = p.direct.as_mut().expect("direct");
        assert_eq!(
            d.written,
            2 * DIRECT_STAGE as u64,
            "two stages went directly"
        );
        // From now on direct writes fail.
        d.file = File::open(&p.tmp).expect("reopen read-only");
        Box::new(p).finish("packs/k").expect("finish falls back");
        let back = b.get("packs/k", None).expect("get");
        assert!(back[..] == all[..], "object differs from what was written");
        assert!(
            !b.direct_refused.load(Ordering::Relaxed),
            "EBADF is not a refusal of O_DIRECT"
        );
    }

    /// After a write fails, the object refuses more writes and its finish: bytes it
    /// took may be missing from the file.
    #[test]
    fn an_object_that_failed_a_write_is_refused() {
        let dir = disk_tempdir();
        let b = LocalBackend::open(dir.path())
            .expect("open")
            .with_direct_writes(false);
        let mut p = packs_partial(&b);
        p.write(b"first").expect("write");
        p.file = File::open(&p.tmp).expect("reopen read-only");
        assert!(
            p.write(b"second").is_err(),
            "write to a read-only descriptor"
        );
        let e = p.write(b"third").expect_err("refused after a failure");
        assert!(e.to_string().contains("failed earlier"), "{e}");
        assert!(Box::new(p).finish("packs/k").is_err(), "finish refused");
        assert!(b.get("packs/k", None).is_err(), "nothing was named");
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
