//! The FUSE ceiling: one file whose bytes come from memory, mounted exactly like a stasis
//! mount (the same [`stasis_fuse::Tuning`]: mount options, dispatch threads, clone_fd,
//! max_readahead, max_background, bdi readahead, and FOPEN_KEEP_CACHE on open). Reading it
//! measures what FUSE itself costs; `tools/bench-mount.sh` compares stasis with it.
//!
//! usage: nullfs MOUNTPOINT [SIZE_BYTES]   (default 2 GiB; the file is MOUNTPOINT/file)
//!
//! Serves until unmounted (`umount MOUNTPOINT`); then prints the read request sizes the
//! kernel sent. `STASIS_FUSE_TUNING` applies as it does to `stasis mount`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};
use stasis_fuse::{ReadSizes, Tuning};

const FILE_INO: u64 = 2;
const NAME: &str = "file";
/// The bytes served: a 1 MiB pattern, twice, so any request of up to 1 MiB at any
/// offset is one slice of it.
const PERIOD: usize = 1 << 20;

#[derive(Debug)]
struct NullFs {
    size: u64,
    pattern: Vec<u8>,
    tuning: Tuning,
    sizes: ReadSizes,
}

impl NullFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match ino {
            1 => (FileType::Directory, 0, 0o555, 2),
            FILE_INO => (FileType::RegularFile, self.size, 0o444, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.tuning.init(config);
        Ok(())
    }

    fn destroy(&mut self) {
        eprintln!(
            "nullfs: {:?}; read requests by size: {}",
            self.tuning,
            self.sizes.summary()
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE_INO) {
            Some(a) if parent.0 == 1 && name == NAME => reply.entry(&TTL, &a, Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == FILE_INO {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.sizes.record(size);
        let len = u64::from(size).min(self.size.saturating_sub(offset)) as usize;
        let start = (offset % PERIOD as u64) as usize;
        match self.pattern.get(start..start + len.min(PERIOD)) {
            Some(d) => reply.data(d),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(point) = args.next().map(PathBuf::from) else {
        eprintln!("usage: nullfs MOUNTPOINT [SIZE_BYTES]");
        return std::process::ExitCode::FAILURE;
    };
    let size = match args.next().map(|s| s.to_string_lossy().parse::<u64>()) {
        None => 2 << 30,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("nullfs: SIZE_BYTES: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let tuning = match Tuning::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nullfs: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Not zeros (a page of zeros could be special-cased somewhere): a fixed byte pattern.
    let pattern: Vec<u8> = (0..2 * PERIOD)
        .map(|i| (i % PERIOD).wrapping_mul(2654435761) as u8 >> 1 | 1)
        .collect();
    let fs = NullFs {
        size,
        pattern,
        tuning,
        sizes: ReadSizes::default(),
    };
    match stasis_fuse::serve_with(fs, &point, &tuning) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nullfs: mounting at {}: {e}", point.display());
            std::process::ExitCode::FAILURE
        }
    }
}
