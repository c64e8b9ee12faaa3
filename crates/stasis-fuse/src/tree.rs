//! The inode table: which node each inode number is, and what each node holds.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use stasis_catalog::{Catalog, ListFilter, Snapshot, Status, layout};
use stasis_store::{PayloadReader, Store};

/// What an inode is. Payload files are keyed by snapshot and position only, so the same
/// file seen through `vms/` and `snapshots/` shares one inode and one page cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// `/`
    Root,
    /// `/vms`
    Vms,
    /// `/snapshots`
    Snapshots,
    /// `/vms/<vm>` (by VM id)
    Vm(String),
    /// A snapshot's directory, under `vms/` or under `snapshots/`.
    SnapDir { id: String, by_vm: bool },
    /// A payload file: snapshot id and position.
    Payload { id: String, idx: usize },
    /// `snapshot.json`
    Json(String),
    /// `parent` symlink in a snapshot directory.
    Parent { id: String, by_vm: bool },
    /// `vms/<vm>/current` symlink (by VM id).
    Current(String),
}

/// The largest read answered straight from [`ZEROS`].
const ZERO_REPLY: usize = 1 << 20;

/// Zeros for reads that fall wholly in holes or zero blocks: replied as they are, with
/// no buffer to fill. Being immutable, it lives in the binary's read-only data (1 MiB of
/// the file, read once from the page cache), not in a buffer that would need clearing.
static ZEROS: [u8; ZERO_REPLY] = [0; ZERO_REPLY];

#[derive(Debug)]
struct PayloadInfo {
    /// The payload's one reader: its holes, read-ahead state and caches live as long
    /// as the inode.
    reader: PayloadReader,
    data_bytes: u64,
    created: SystemTime,
}

#[derive(Debug, Default)]
struct Inodes {
    nodes: Vec<Node>,
    numbers: HashMap<Node, u64>,
}

/// The filesystem's state.
#[derive(Debug)]
pub struct Tree {
    store: Arc<Store>,
    catalog: Mutex<Catalog>,
    inodes: RwLock<Inodes>,
    payloads: RwLock<HashMap<u64, Arc<PayloadInfo>>>,
    mounted: SystemTime,
    uid: u32,
    gid: u32,
}

/// A directory entry: inode, type, name.
pub type Entry = (u64, FileType, String);

fn eio<E: std::fmt::Display>(e: E) -> Errno {
    tracing::warn!("stasis-fuse: {e}");
    Errno::EIO
}

fn time_of(s: &Snapshot) -> SystemTime {
    s.created_at
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_second()).ok())
        .map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::from_secs(secs))
}

impl Tree {
    /// A tree over `store` and `catalog`.
    pub fn new(store: Arc<Store>, catalog: Mutex<Catalog>) -> Self {
        let mut inodes = Inodes::default();
        inodes.nodes.push(Node::Root);
        inodes.numbers.insert(Node::Root, 1);
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Tree {
            store,
            catalog,
            inodes: RwLock::new(inodes),
            payloads: RwLock::new(HashMap::new()),
            mounted: SystemTime::now(),
            uid,
            gid,
        }
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ino(&self, node: Node) -> u64 {
        if let Some(n) = self
            .inodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .numbers
            .get(&node)
        {
            return *n;
        }
        let mut w = self.inodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.numbers.get(&node) {
            return *n;
        }
        w.nodes.push(node.clone());
        let n = w.nodes.len() as u64;
        w.numbers.insert(node, n);
        n
    }

    fn node(&self, ino: u64) -> Result<Node, Errno> {
        let r = self.inodes.read().unwrap_or_else(|p| p.into_inner());
        usize::try_from(ino)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| r.nodes.get(i).cloned())
            .ok_or(Errno::ENOENT)
    }

    /// A live snapshot by id.
    fn snapshot(&self, id: &str) -> Result<Snapshot, Errno> {
        match self.catalog().get(id).map_err(eio)? {
            Some(s) if s.status != Status::Deleted => Ok(s),
            _ => Err(Errno::ENOENT),
        }
    }

    fn payload(&self, ino: u64, id: &str, idx: usize) -> Result<Arc<PayloadInfo>, Errno> {
        if let Some(p) = self
            .payloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
        {
            return Ok(Arc::clone(p));
        }
        // Deleted snapshots stay readable through open files until gc.
        let s = self.catalog().get(id).map_err(eio)?.ok_or(Errno::ENOENT)?;
        let p = s.payloads.get(idx).ok_or(Errno::ENOENT)?;
        let info = Arc::new(PayloadInfo {
            reader: PayloadReader::new(Arc::clone(&self.store), p.manifest).map_err(eio)?,
            data_bytes: p.data_bytes,
            created: time_of(&s),
        });
        self.payloads
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino, Arc::clone(&info));
        Ok(info)
    }

    fn json(&self, id: &str) -> Result<(Vec<u8>, SystemTime), Errno> {
        let s = self.snapshot(id)?;
        let mut bytes = serde_json::to_vec_pretty(&s).map_err(eio)?;
        bytes.push(b'\n');
        Ok((bytes, time_of(&s)))
    }

    fn attr_of(
        &self,
        ino: u64,
        kind: FileType,
        size: u64,
        blocks: u64,
        time: SystemTime,
    ) -> FileAttr {
        let perm = match kind {
            FileType::Directory => 0o555,
            FileType::Symlink => 0o777,
            _ => 0o444,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attributes of an inode.
    pub fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let dir = |t| Ok(self.attr_of(ino, FileType::Directory, 0, 0, t));
        match self.node(ino)? {
            Node::Root | Node::Vms | Node::Snapshots => dir(self.mounted),
            Node::Vm(vm) => {
                self.catalog().vm(&vm).map_err(eio)?.ok_or(Errno::ENOENT)?;
                dir(self.mounted)
            }
            Node::SnapDir { id, .. } => dir(time_of(&self.snapshot(&id)?)),
            Node::Payload { id, idx } => {
                let p = self.payload(ino, &id, idx)?;
                Ok(self.attr_of(
                    ino,
                    FileType::RegularFile,
                    p.reader.size(),
                    p.data_bytes.div_ceil(512),
                    p.created,
                ))
            }
            Node::Json(id) => {
                let (bytes, t) = self.json(&id)?;
                Ok(self.attr_of(
                    ino,
                    FileType::RegularFile,
                    bytes.len() as u64,
                    (bytes.len() as u64).div_ceil(512),
                    t,
                ))
            }
            Node::Parent { .. } | Node::Current(_) => {
                let target = self.link_target(ino)?;
                Ok(self.attr_of(ino, FileType::Symlink, target.len() as u64, 0, self.mounted))
            }
        }
    }

    /// Where a symlink points.
    pub fn link_target(&self, ino: u64) -> Result<String, Errno> {
        match self.node(ino)? {
            Node::Parent { id, by_vm } => {
                let parent = self.snapshot(&id)?.parent_id.ok_or(Errno::ENOENT)?;
                Ok(layout::parent_target(&parent, by_vm))
            }
            Node::Current(vm) => {
                let current = self
                    .catalog()
                    .vm(&vm)
                    .map_err(eio)?
                    .and_then(|v| v.current_id)
                    .ok_or(Errno::ENOENT)?;
                Ok(self.snapshot(&current)?.name)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// The entries of a directory, `.` and `..` first.
    pub fn entries(&self, ino: u64) -> Result<Vec<Entry>, Errno> {
        let node = self.node(ino)?;
        let mut out: Vec<Entry> = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        let dir = FileType::Directory;
        match node {
            Node::Root => {
                out.push((self.ino(Node::Vms), dir, layout::VMS.into()));
                out.push((self.ino(Node::Snapshots), dir, layout::SNAPSHOTS.into()));
            }
            Node::Vms => {
                let vms = self.catalog().vms().map_err(eio)?;
                for vm in vms {
                    out.push((self.ino(Node::Vm(vm.id)), dir, vm.name));
                }
            }
            Node::Snapshots => {
                let snaps = self
                    .catalog()
                    .list_filtered(&ListFilter::default())
                    .map_err(eio)?;
                for s in snaps {
                    out.push((
                        self.ino(Node::SnapDir {
                            id: s.id.clone(),
                            by_vm: false,
                        }),
                        dir,
                        s.id,
                    ));
                }
            }
            Node::Vm(vm) => {
                let (snaps, current) = {
                    let cat = self.catalog();
                    let f = ListFilter {
                        vm: Some(vm.clone()),
                        ..ListFilter::default()
                    };
                    let current = cat.vm(&vm).map_err(eio)?.ok_or(Errno::ENOENT)?.current_id;
                    (cat.list_filtered(&f).map_err(eio)?, current)
                };
                for s in snaps {
                    out.push((
                        self.ino(Node::SnapDir {
                            id: s.id,
                            by_vm: true,
                        }),
                        dir,
                        s.name,
                    ));
                }
                if current.is_some() {
                    out.push((
                        self.ino(Node::Current(vm)),
                        FileType::Symlink,
                        layout::CURRENT.into(),
                    ));
                }
            }
            Node::SnapDir { id, by_vm } => {
                let s = self.snapshot(&id)?;
                for (idx, p) in s.payloads.iter().enumerate() {
                    out.push((
                        self.ino(Node::Payload {
                            id: id.clone(),
                            idx,
                        }),
                        FileType::RegularFile,
                        p.name.clone(),
                    ));
                }
                out.push((
                    self.ino(Node::Json(id.clone())),
                    FileType::RegularFile,
                    layout::RECORD.into(),
                ));
                if s.parent_id.is_some() {
                    out.push((
                        self.ino(Node::Parent { id, by_vm }),
                        FileType::Symlink,
                        layout::PARENT.into(),
                    ));
                }
            }
            _ => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// Find `name` in directory `parent`. Goes to the catalog by key, so directories of
    /// any size answer quickly.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let child = match self.node(parent)? {
            Node::Root => match name {
                layout::VMS => Node::Vms,
                layout::SNAPSHOTS => Node::Snapshots,
                _ => return Err(Errno::ENOENT),
            },
            Node::Vms => Node::Vm(
                self.catalog()
                    .vm(name)
                    .map_err(eio)?
                    .ok_or(Errno::ENOENT)?
                    .id,
            ),
            Node::Snapshots => Node::SnapDir {
                id: self.snapshot(name)?.id,
                by_vm: false,
            },
            Node::Vm(vm) if name == layout::CURRENT => Node::Current(vm),
            Node::Vm(vm) => {
                let s = self
                    .catalog()
                    .resolve(&format!("{vm}/{name}"))
                    .map_err(|_| Errno::ENOENT)?;
                if s.status == Status::Deleted {
                    return Err(Errno::ENOENT);
                }
                Node::SnapDir {
                    id: s.id,
                    by_vm: true,
                }
            }
            Node::SnapDir { id, by_vm } => {
                let s = self.snapshot(&id)?;
                match name {
                    layout::RECORD => Node::Json(id),
                    layout::PARENT if s.parent_id.is_some() => Node::Parent { id, by_vm },
                    _ => {
                        let idx = s
                            .payloads
                            .iter()
                            .position(|p| p.name == name)
                            .ok_or(Errno::ENOENT)?;
                        Node::Payload { id, idx }
                    }
                }
            }
            _ => return Err(Errno::ENOTDIR),
        };
        self.attr(self.ino(child))
    }

    /// Read up to `size` bytes at `offset` into `buf`, reusing its allocation: on
    /// success it holds exactly the bytes read; after an error its contents are
    /// unspecified and must not be sent.
    pub fn read<'b>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], Errno> {
        match self.node(ino)? {
            Node::Payload { id, idx } => {
                let p = self.payload(ino, &id, idx)?;
                let reader = &p.reader;
                let len = u64::from(size).min(reader.size().saturating_sub(offset));
                if len as usize <= ZERO_REPLY && reader.read_holes(offset, len).map_err(eio)? {
                    // All holes: nothing to decode or copy (the reader still reads
                    // ahead past them).
                    return Ok(&ZEROS[..len as usize]);
                }
                // Sized, not cleared: `read_at` writes every byte of it (holes and zero
                // blocks as zeros) or fails, and a failed read's buffer is never sent, so
                // no byte of an earlier read can stay behind. Not zeroing it first saves a
                // memset of every request.
                buf.truncate(len as usize);
                buf.resize(len as usize, 0);
                let n = reader.read_at(offset, buf).map_err(eio)?;
                buf.truncate(n);
                Ok(&buf[..])
            }
            Node::Json(id) => {
                buf.clear();
                let (bytes, _) = self.json(&id)?;
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                buf.extend_from_slice(&bytes[start..end]);
                Ok(&buf[..])
            }
            _ => Err(Errno::EISDIR),
        }
    }

    /// `lseek` with SEEK_DATA or SEEK_HOLE: holes and zero blocks are holes.
    pub fn seek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let Node::Payload { id, idx } = self.node(ino)? else {
            return Err(Errno::EINVAL);
        };
        let p = self.payload(ino, &id, idx)?;
        let off = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let r = &p.reader;
        if off >= r.size() {
            return Err(Errno::ENXIO);
        }
        let found = match whence {
            libc::SEEK_DATA => r.seek_data(off).map_err(eio)?.ok_or(Errno::ENXIO)?,
            libc::SEEK_HOLE => r.seek_hole(off).map_err(eio)?,
            libc::SEEK_SET => off,
            _ => return Err(Errno::EINVAL),
        };
        i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
    }
}
