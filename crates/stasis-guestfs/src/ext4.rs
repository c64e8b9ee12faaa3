//! ext2/3/4, read-only, through `ext4-view`: it validates the superblock and the
//! group descriptors (and their checksums), replays the journal's committed
//! transactions in memory, and bounds every structure it follows; its reads go to a
//! [`Window`], so none reaches outside the partition or payload.

use std::sync::Arc;

use ext4_view::{Ext4, Ext4Read, FileType};
use serde::{Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::partition::starts_with_ext;
use crate::source::{Source, Window};

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl Kind {
    fn of(t: FileType) -> Kind {
        match t {
            FileType::Regular => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
        }
    }

    /// `ls -l`'s letter for it.
    pub fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::CharDevice => 'c',
            Kind::BlockDevice => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }
}

fn lossy<S: Serializer>(b: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

fn lossy_opt<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

/// A file of the guest's tree and what its inode says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its name in its directory (`/` for the root); bytes, as the guest wrote them.
    #[serde(serialize_with = "lossy")]
    pub name: Vec<u8>,
    /// Its kind.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last modification: seconds since the epoch.
    pub mtime: i64,
    /// ... and nanoseconds.
    pub mtime_nsec: u32,
    /// A symlink's target (never followed).
    #[serde(serialize_with = "lossy_opt", skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
}

impl Entry {
    /// Its name for display (not UTF-8 bytes replaced).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// `ext4-view`'s reader over a window.
struct Reader(Window);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0
            .read_exact_at(start_byte, dst)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    }
}

/// One ext2/3/4 filesystem, open. Not `Send`: open one per thread.
pub struct Filesystem {
    fs: Ext4,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem")
            .field("label", &self.fs.label().to_str().unwrap_or("?"))
            .finish_non_exhaustive()
    }
}

fn path(p: &[u8]) -> Result<ext4_view::Path<'_>> {
    ext4_view::Path::try_from(p).map_err(|e| {
        Error::new(
            ErrorKind::Invalid,
            format!("path {:?}: {e}", String::from_utf8_lossy(p)),
        )
    })
}

/// Join a directory's path and an entry's name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The largest piece [`Filesystem::read_file`] hands on at once.
pub const CHUNK: usize = 1 << 20;

impl Filesystem {
    /// The filesystem in `src`, or `None` when `src` does not start with one.
    pub fn open(src: Window) -> Result<Option<Filesystem>> {
        if !starts_with_ext(&src) {
            return Ok(None);
        }
        let fs = Ext4::load(Box::new(Reader(src))).map_err(Error::ext4)?;
        Ok(Some(Filesystem { fs }))
    }

    /// The filesystem in all of `src` (see [`Filesystem::open`]).
    pub fn open_whole(src: Arc<dyn Source>) -> Result<Option<Filesystem>> {
        Filesystem::open(Window::whole(src))
    }

    /// Its label.
    pub fn label(&self) -> String {
        self.fs.label().display().to_string()
    }

    /// The entry at `p` (absolute; a final symlink is not followed; symlinks on the
    /// way resolve inside this filesystem).
    pub fn stat(&self, p: &[u8]) -> Result<Entry> {
        let what = || String::from_utf8_lossy(p).into_owned();
        let m = self
            .fs
            .symlink_metadata(path(p)?)
            .map_err(|e| Error::ext4(e).context(what()))?;
        let name = match p.iter().rposition(|b| *b == b'/') {
            Some(i) if i + 1 < p.len() => p[i + 1..].to_vec(),
            _ => b"/".to_vec(),
        };
        self.entry(p, name, &m).map_err(|e| e.context(what()))
    }

    fn entry(&self, p: &[u8], name: Vec<u8>, m: &ext4_view::Metadata) -> Result<Entry> {
        let kind = Kind::of(m.file_type());
        let target = match kind {
            Kind::Symlink => Some(
                self.fs
                    .read_link(path(p)?)
                    .map_err(Error::ext4)?
                    .as_ref()
                    .to_vec(),
            ),
            _ => None,
        };
        let t = m.modified();
        Ok(Entry {
            name,
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.len(),
            mtime: t.seconds(),
            mtime_nsec: t.nanoseconds(),
            target,
        })
    }

    /// The entries of directory `p`, by name (`.` and `..` left out).
    pub fn list(&self, p: &[u8]) -> Result<Vec<Entry>> {
        let what = || String::from_utf8_lossy(p).into_owned();
        let mut out = Vec::new();
        for e in self
            .fs
            .read_dir(path(p)?)
            .map_err(|e| Error::ext4(e).context(what()))?
        {
            let e = e.map_err(|e| Error::ext4(e).context(what()))?;
            let name = e.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let full = join(p, &name);
            let m = e
                .metadata()
                .map_err(|e| Error::ext4(e).context(String::from_utf8_lossy(&full)))?;
            out.push(
                self.entry(&full, name, &m)
                    .map_err(|e| e.context(String::from_utf8_lossy(&full)))?,
            );
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Hand regular file `p`'s bytes to `sink` in order, in pieces of at most
    /// [`CHUNK`] (holes as zeros); its size.
    pub fn read_file(&self, p: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let what = || String::from_utf8_lossy(p).into_owned();
        let e = self.stat(p)?;
        if e.kind != Kind::File {
            return Err(Error::new(
                ErrorKind::NotAFile,
                format!("{} is not a regular file", what()),
            ));
        }
        let mut f = self
            .fs
            .open(path(p)?)
            .map_err(|e| Error::ext4(e).context(what()))?;
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        let mut total = 0u64;
        loop {
            let n = f
                .read_bytes(&mut buf[filled..])
                .map_err(|e| Error::ext4(e).context(what()))?;
            filled += n;
            total += n as u64;
            if n == 0 || filled == buf.len() {
                if filled > 0 {
                    sink(&buf[..filled])?;
                }
                if n == 0 {
                    break;
                }
                filled = 0;
            }
        }
        if total != e.size {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: {total} bytes read of {}", what(), e.size),
            ));
        }
        Ok(total)
    }
}
