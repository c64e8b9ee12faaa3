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
use stasis_store::store::Store;

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
}

impl SnapshotFs {
    /// A view of `store` and `catalog`.
    pub fn new(store: Arc<Store>, catalog: Catalog) -> Self {
        SnapshotFs {
            tree: Tree::new(store, Mutex::new(catalog)),
            open_dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<Entry>>>> {
        self.open_dirs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Mount options used by stasis: read-only in content (writes fail with EROFS) but not
/// MS_RDONLY, so QEMU's O_RDWR open of a memory file succeeds; two dispatch threads.
pub fn config() -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName("stasis".into()),
        MountOption::Subtype("stasis".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    c.n_threads = Some(2);
    c
}

/// Mount `fs` at `mountpoint` in background threads; dropping the session unmounts.
pub fn spawn(fs: SnapshotFs, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    fuser::spawn_mount(fs, mountpoint, &config())
}

/// Mount `fs` at `mountpoint` and serve until it is unmounted.
pub fn serve(fs: SnapshotFs, mountpoint: &Path) -> std::io::Result<()> {
    fuser::mount(fs, mountpoint, &config())
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
        // Large requests and readahead: a request can carry 1 MiB here.
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
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
        match self.tree.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
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
