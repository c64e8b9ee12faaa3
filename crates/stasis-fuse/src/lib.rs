//! # stasis-fuse
//!
//! The catalog as a read-only filesystem:
//!
//! ```text
//! vms/<vm>/<snapshot>/<payload files>   each under its exact name and size
//! vms/<vm>/<snapshot>/snapshot.json     the record, as `stasis show --json` prints it
//! vms/<vm>/<snapshot>/parent            symlink to the parent's directory
//! vms/<vm>/current                      symlink to the current snapshot
//! snapshots/<id>/...                    the same directories by id
//! ```
//!
//! Directories are listed from the catalog on every lookup, so new snapshots appear and
//! deleted ones disappear without a remount. Payload files read through the store's
//! shared block cache (blocks shared by many snapshots are decoded once), report their
//! holes to `lseek(SEEK_DATA/SEEK_HOLE)`, and are opened with `FOPEN_KEEP_CACHE`: they
//! are immutable, so the kernel's page cache stays valid across opens. Opening for
//! writing is accepted (QEMU opens a guest's memory file O_RDWR even with share=off and
//! never writes through it), but every write and every change is refused with EROFS.
//! Corrupt blocks are reported as EIO, never returned.
//!
//! `fuser` (whose API changes between releases) is used only in this crate.

mod tree;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    Config, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use stasis_catalog::Catalog;
use stasis_store::Store;

pub use tree::{Entry, Node, Tree};

/// How long the kernel may cache names and attributes. Snapshots are immutable, but
/// directories change as snapshots come and go, so keep it short.
const TTL: Duration = Duration::from_secs(1);

/// The filesystem: a store, its catalog and the inode table.
#[derive(Debug)]
pub struct SnapshotFs {
    tree: Tree,
    /// Each open directory's listing, taken once at opendir: the kernel reads a large
    /// directory in many chunks, and each chunk is served from here.
    open_dirs: Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
    next_handle: AtomicU64,
    tuning: Tuning,
    read_sizes: ReadSizes,
}

impl SnapshotFs {
    /// A view of `store` and `catalog`.
    pub fn new(store: Arc<Store>, catalog: Catalog) -> Self {
        SnapshotFs {
            tree: Tree::new(store, Mutex::new(catalog)),
            open_dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            tuning: Tuning::default(),
            read_sizes: ReadSizes::default(),
        }
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<Entry>>>> {
        self.open_dirs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a mount is set up: dispatch threads, request and readahead sizes. The defaults
/// are what measured best here (`tools/bench-mount.sh`, docs/measurements/mount-reads.md):
/// the kernel's 128 KiB readahead for a FUSE mount held cold sequential reads to 128 KiB
/// requests; with a 2 MiB bdi readahead they are 1 MiB requests, two in flight, and a
/// cloned /dev/fuse descriptor per thread helped a little more. More threads or a larger
/// max_background did not help on 2 cores.
///
/// `STASIS_FUSE_TUNING` overrides the defaults for experiments, as comma-separated
/// `key=value` pairs: `threads=N`, `clone_fd=0|1`, `readahead=BYTES` (max_readahead
/// negotiated at init, 4K..1M), `bdi_readahead=BYTES` (the mount's `read_ahead_kb`, 0 to
/// leave the kernel's) and `background=N` (max_background: readahead requests in
/// flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Threads that read requests from /dev/fuse and serve them.
    pub threads: usize,
    /// Give each thread its own /dev/fuse descriptor (FUSE_DEV_IOC_CLONE).
    pub clone_fd: bool,
    /// max_readahead answered at init.
    pub readahead: u32,
    /// The mount's readahead window (`/sys/class/bdi/<dev>/read_ahead_kb`), in bytes,
    /// set after mounting (root only); 0 leaves the kernel's, which is the smaller of
    /// max_readahead and 128 KiB. Requests stay at most 1 MiB (max_pages) each.
    pub bdi_readahead: u32,
    /// max_background answered at init.
    pub background: u16,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            threads: 2,
            clone_fd: true,
            readahead: 1 << 20,
            bdi_readahead: 2 << 20,
            background: 16,
        }
    }
}

fn bad_tuning(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("STASIS_FUSE_TUNING: {what}"),
    )
}

impl Tuning {
    /// The defaults, overridden by `STASIS_FUSE_TUNING` when it is set.
    pub fn from_env() -> std::io::Result<Tuning> {
        match std::env::var("STASIS_FUSE_TUNING") {
            Ok(s) => Tuning::parse(&s),
            Err(_) => Ok(Tuning::default()),
        }
    }

    /// Parse `key=value,...` over the defaults.
    pub fn parse(s: &str) -> std::io::Result<Tuning> {
        let mut t = Tuning::default();
        for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad_tuning(&format!("{kv:?} is not key=value")))?;
            let num = |v: &str| -> std::io::Result<u64> {
                let (digits, mult) = match v.as_bytes().last() {
                    Some(b'K' | b'k') => (&v[..v.len() - 1], 1u64 << 10),
                    Some(b'M' | b'm') => (&v[..v.len() - 1], 1 << 20),
                    _ => (v, 1),
                };
                digits
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(mult))
                    .ok_or_else(|| bad_tuning(&format!("{k}: {v:?} is not a size")))
            };
            let small = |n: u64, max: u64| {
                if n <= max {
                    Ok(n)
                } else {
                    Err(bad_tuning(&format!("{k}={n} is larger than {max}")))
                }
            };
            match k {
                "threads" => t.threads = small(num(v)?, 64)?.max(1) as usize,
                "clone_fd" => t.clone_fd = num(v)? != 0,
                "readahead" => t.readahead = small(num(v)?, 1 << 20)?.max(4096) as u32,
                "bdi_readahead" => t.bdi_readahead = small(num(v)?, 64 << 20)? as u32,
                "background" => t.background = small(num(v)?, 1024)?.max(1) as u16,
                _ => return Err(bad_tuning(&format!("unknown key {k:?}"))),
            }
        }
        Ok(t)
    }

    /// Mount options and threads: read-only in content (writes fail with EROFS) but not
    /// MS_RDONLY, so QEMU's O_RDWR open of a memory file succeeds. clone_fd is dropped
    /// when this process cannot open /dev/fuse itself (each clone is a new open).
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.mount_options = vec![
            MountOption::FSName("stasis".into()),
            MountOption::Subtype("stasis".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        c.n_threads = Some(self.threads);
        c.clone_fd = self.clone_fd
            && std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .is_ok();
        c
    }

    /// What to answer the kernel's init with. fuser asks for FUSE_MAX_PAGES with
    /// max_pages from its 16 MiB max_write, which the kernel caps (256 pages, 1 MiB,
    /// here), so one request can carry 1 MiB.
    pub fn init(&self, config: &mut KernelConfig) {
        let _ = config.set_max_readahead(self.readahead);
        let _ = config.set_max_background(self.background);
    }

    /// Set the mount's bdi readahead (needs root; a failure only costs speed).
    /// `mountpoint` must be canonical. The mount's device number comes from
    /// /proc/self/mountinfo: a stat of the mountpoint would wait for this very session,
    /// which is not serving yet.
    fn apply_bdi(&self, mountpoint: &Path) {
        if self.bdi_readahead == 0 {
            return;
        }
        let Some(dev) = mount_device(mountpoint) else {
            tracing::debug!("stasis-fuse: {} not in mountinfo", mountpoint.display());
            return;
        };
        let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, format!("{}", self.bdi_readahead / 1024)) {
            tracing::debug!("stasis-fuse: cannot set {path}: {e}");
        }
    }
}

/// `major:minor` of the filesystem mounted last at `mountpoint` (canonical), from
/// /proc/self/mountinfo.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let point = mountpoint.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint ...; the kernel writes space, tab,
    // newline and backslash in paths as octal escapes.
    let unescape = |f: &str| {
        f.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let mp = f.nth(1)?;
        (unescape(mp) == point).then(|| dev.to_string())
    })
}

/// Mount any filesystem at `mountpoint` with `tuning` and serve it until it is unmounted.
/// `fs` must call [`Tuning::init`] from its `init`.
pub fn serve_with<FS: Filesystem>(
    fs: FS,
    mountpoint: &Path,
    tuning: &Tuning,
) -> std::io::Result<()> {
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    let session = fuser::Session::new(fs, &mountpoint, &tuning.config())?;
    tuning.apply_bdi(&mountpoint);
    session.run()
}

/// Mount `fs` at `mountpoint` in background threads; dropping the session unmounts.
pub fn spawn(mut fs: SnapshotFs, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let tuning = Tuning::from_env()?;
    fs.tuning = tuning;
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    let session = fuser::Session::new(fs, &mountpoint, &tuning.config())?;
    tuning.apply_bdi(&mountpoint);
    session.spawn()
}

/// Mount `fs` at `mountpoint` and serve until it is unmounted (tuned by
/// `STASIS_FUSE_TUNING` when set, see [`Tuning`]).
pub fn serve(mut fs: SnapshotFs, mountpoint: &Path) -> std::io::Result<()> {
    let tuning = Tuning::from_env()?;
    fs.tuning = tuning;
    serve_with(fs, mountpoint, &tuning)
}

/// How many read requests of each size a mount served: whether the kernel sends large
/// reads. Logged at unmount (`STASIS_LOG=stasis_fuse=info`).
#[derive(Debug, Default)]
pub struct ReadSizes {
    /// Bucket k counts requests of (2^(k-1)*4K, 2^k*4K] bytes; the last one, larger.
    buckets: [AtomicU64; 10],
}

impl ReadSizes {
    /// Count one request of `size` bytes.
    pub fn record(&self, size: u32) {
        let pages = size.div_ceil(4096).max(1);
        let k = (32 - (pages - 1).leading_zeros()) as usize;
        self.buckets[k.min(self.buckets.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// `"<=4K:n <=8K:n ... >1M:n"`, non-empty buckets only.
    pub fn summary(&self) -> String {
        let last = self.buckets.len() - 1;
        let size = |kib: u64| match kib {
            k if k >= 1024 => format!("{}M", k / 1024),
            k => format!("{k}K"),
        };
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(k, b)| {
                let n = b.load(Ordering::Relaxed);
                (n > 0).then(|| match k {
                    k if k == last => format!(">{}:{n}", size(4 << (k - 1))),
                    k => format!("<={}:{n}", size(4 << k)),
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Unmount a stasis mount (lazy, like `umount -l`, so a busy mount detaches too).
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Filesystem for SnapshotFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.tuning.init(config);
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::info!(
            "stasis-fuse: {:?}; read requests by size: {}",
            self.tuning,
            self.read_sizes.summary()
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.link_target(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.attr(ino.0) {
            Ok(a) if a.kind == FileType::RegularFile => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.read_sizes.record(size);
        // One buffer per dispatch thread, reused: a fresh 1 MiB per request costs page
        // faults.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| match self.tree.read(ino.0, offset, size, buf) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(e),
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.tree.seek(ino.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.entries(ino.0) {
            Ok(entries) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                self.dirs().insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let cached = self.dirs().get(&fh.0).cloned();
        let entries = match cached {
            Some(e) => e,
            None => match self.tree.entries(ino.0) {
                Ok(e) => Arc::new(e),
                Err(e) => return reply.error(e),
            },
        };
        for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs().remove(&fh.0);
        reply.ok();
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // O_TRUNC opens and chmod/chown/utimes all change the file: refused.
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_parses_over_the_defaults() {
        let d = Tuning::default();
        assert_eq!(Tuning::parse("").expect("empty"), d);
        let t =
            Tuning::parse("threads=4, clone_fd=0,bdi_readahead=4M,readahead=512K").expect("parse");
        assert_eq!(
            t,
            Tuning {
                threads: 4,
                clone_fd: false,
                readahead: 512 << 10,
                bdi_readahead: 4 << 20,
                ..d
            }
        );
        for bad in [
            "threads",
            "nope=1",
            "threads=x",
            "readahead=2M",
            "background=1G",
        ] {
            assert!(Tuning::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_sizes_bucket_by_power_of_two_pages() {
        let s = ReadSizes::default();
        for size in [1, 4096, 4097, 128 << 10, 1 << 20, (1 << 20) + 1] {
            s.record(size);
        }
        assert_eq!(s.summary(), "<=4K:2 <=8K:1 <=128K:1 <=1M:1 >1M:1");
    }
}
