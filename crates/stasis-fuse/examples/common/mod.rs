//! What the one-file examples (`nullfs`, `decodefs`) share: a read-only mount holding
//! one file, `file`, whose reads a [`Source`] answers, mounted exactly like a stasis
//! mount (the same [`Tuning`]).

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};
use stasis_fuse::Tuning;

const FILE_INO: u64 = 2;
const NAME: &str = "file";
const TTL: Duration = Duration::from_secs(1);

/// The bytes of the one file.
pub trait Source: Send + Sync + 'static {
    /// The file's size.
    fn size(&self) -> u64;
    /// Answer a read of `size` bytes at `offset`.
    fn read(&self, offset: u64, size: u32, reply: ReplyData);
    /// Called once unmounted.
    fn destroy(&mut self, _tuning: &Tuning) {}
}

/// The mount: a root directory holding `file`.
#[derive(Debug)]
struct OneFile<S> {
    source: S,
    tuning: Tuning,
}

impl<S: Source> OneFile<S> {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match ino {
            1 => (FileType::Directory, 0, 0o555, 2),
            FILE_INO => (FileType::RegularFile, self.source.size(), 0o444, 1),
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

impl<S: Source> Filesystem for OneFile<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.tuning.init(config);
        Ok(())
    }

    fn destroy(&mut self) {
        self.source.destroy(&self.tuning);
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
        self.source.read(offset, size, reply);
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

/// The tuning `STASIS_FUSE_TUNING` asks for (the defaults when unset); `None` after
/// saying why it is bad.
pub fn tuning(program: &str) -> Option<Tuning> {
    match Tuning::from_env() {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("{program}: {e}");
            None
        }
    }
}

/// Serve `source` at `point` until unmounted.
pub fn serve(program: &str, source: impl Source, tuning: Tuning, point: &Path) -> ExitCode {
    match stasis_fuse::serve_with(OneFile { source, tuning }, point, &tuning) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: mounting at {}: {e}", point.display());
            ExitCode::FAILURE
        }
    }
}
