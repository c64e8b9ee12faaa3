//! The guest's files in a snapshot's disks ([`stasis_guestfs`]), named as
//! `SNAP[:DISK[/pN]]:/path` ([`GuestPath`]): listed, read and copied out, without root.
//!
//! A disk is read through the store's random-access payload reader (every block
//! checked against its id), so only the blocks the filesystem's structures and the
//! files asked for are decoded. DISK may be left out when the snapshot has one disk,
//! `pN` when the disk holds one filesystem.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use serde::Serialize;
use stasis_catalog::Snapshot;
use stasis_guestfs::{Entry, Kind, Source, Volume};
use stasis_store::{PayloadReader, Role, Store};

use crate::error::{Error, Result};

/// A snapshot's payload as a guest disk.
#[derive(Debug)]
pub struct PayloadSource(PayloadReader);

impl Source for PayloadSource {
    fn len(&self) -> u64 {
        self.0.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> stasis_guestfs::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .0
                .read_at(offset + done as u64, &mut buf[done..])
                .map_err(|e| {
                    stasis_guestfs::Error::new(stasis_guestfs::ErrorKind::Io, e.to_string())
                })?;
            if n == 0 {
                return Err(stasis_guestfs::Error::new(
                    stasis_guestfs::ErrorKind::Corrupt,
                    format!(
                        "a read of {} bytes at {offset} reaches past the disk's end",
                        buf.len()
                    ),
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// `SNAP[:DISK[/pN]]:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPath {
    /// The snapshot: an id, VM/NAME or VM.
    pub snap: String,
    /// The disk (payload name); `None`: the snapshot's only one.
    pub disk: Option<String>,
    /// The partition (`p2`); `None`: the disk's only filesystem.
    pub volume: Option<String>,
    /// The absolute path inside the guest.
    pub path: Vec<u8>,
}

impl FromStr for GuestPath {
    type Err = Error;

    fn from_str(s: &str) -> Result<GuestPath> {
        let bad = || {
            Error::Invalid(format!(
                "{s:?}: expected SNAP[:DISK[/pN]]:/PATH (for example web/day3:root:/etc)"
            ))
        };
        let (snap, rest) = s.split_once(':').ok_or_else(bad)?;
        if snap.is_empty() {
            return Err(bad());
        }
        let (disk, path) = if rest.starts_with('/') {
            (None, rest)
        } else {
            let (d, _) = rest.split_once(":/").ok_or_else(bad)?;
            (Some(d), &rest[d.len() + 1..])
        };
        let (disk, volume) = match disk {
            None => (None, None),
            Some(d) => match d.split_once('/') {
                Some((d, v))
                    if !d.is_empty() && v.starts_with('p') && v[1..].parse::<u32>().is_ok() =>
                {
                    (Some(d.to_string()), Some(v.to_string()))
                }
                Some(_) => return Err(bad()),
                None if d.is_empty() => return Err(bad()),
                None => (Some(d.to_string()), None),
            },
        };
        Ok(GuestPath {
            snap: snap.to_string(),
            disk,
            volume,
            path: path.as_bytes().to_vec(),
        })
    }
}

/// The disk `name` of `snap` (or its only disk) as a guest disk.
pub fn disk(
    store: &Arc<Store>,
    snap: &Snapshot,
    name: Option<&str>,
) -> Result<(String, Arc<dyn Source>)> {
    let disks: Vec<_> = snap
        .payloads
        .iter()
        .filter(|p| p.role == Role::Disk)
        .collect();
    let p =
        match name {
            Some(n) => snap.payloads.iter().find(|p| p.name == n).ok_or_else(|| {
                Error::NotFound(format!("snapshot {} has no file {n:?}", snap.id))
            })?,
            None => match disks.as_slice() {
                [one] => *one,
                [] => return Err(Error::NotFound(format!("snapshot {} has no disk", snap.id))),
                many => {
                    let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
                    return Err(Error::Invalid(format!(
                        "snapshot {} has {} disks ({}): name one, SNAP:DISK:/PATH",
                        snap.id,
                        many.len(),
                        names.join(", ")
                    )));
                }
            },
        };
    let reader = PayloadReader::new(store.clone(), p.manifest)?;
    Ok((p.name.clone(), Arc::new(PayloadSource(reader))))
}

/// The filesystem `volume` (`pN`) of a disk, or its only one.
pub fn volume(disk_name: &str, disk: Arc<dyn Source>, volume: Option<&str>) -> Result<Volume> {
    let mut vols = stasis_guestfs::volumes(disk).map_err(|e| guest(e.context(disk_name)))?;
    match volume {
        Some(v) => {
            let i = vols.iter().position(|x| x.name == v).ok_or_else(|| {
                Error::NotFound(format!(
                    "disk {disk_name} has no filesystem in partition {v}"
                ))
            })?;
            Ok(vols.swap_remove(i))
        }
        None if vols.len() == 1 => Ok(vols.remove(0)),
        None if vols.is_empty() => Err(Error::NotFound(format!(
            "disk {disk_name} holds no filesystem stasis reads (ext2/3/4, bare or in a GPT or MBR partition)"
        ))),
        None => {
            let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
            Err(Error::Invalid(format!(
                "disk {disk_name} holds {} filesystems ({}): name one, SNAP:{disk_name}/pN:/PATH",
                vols.len(),
                names.join(", ")
            )))
        }
    }
}

/// A guest path's filesystem, open.
#[derive(Debug)]
pub struct Opened {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The disk's name.
    pub disk: String,
    /// Its filesystem.
    pub volume: Volume,
}

/// Open the filesystem `gp` names (its snapshot must be live).
pub fn open(
    store: &Arc<Store>,
    catalog: &stasis_catalog::Catalog,
    gp: &GuestPath,
) -> Result<Opened> {
    let snapshot = catalog.resolve(&gp.snap)?;
    if snapshot.status == stasis_catalog::Status::Deleted {
        return Err(Error::NotFound(format!(
            "snapshot {} is deleted",
            snapshot.id
        )));
    }
    let (disk, src) = disk(store, &snapshot, gp.disk.as_deref())?;
    let volume = volume(&disk, src, gp.volume.as_deref())?;
    Ok(Opened {
        snapshot,
        disk,
        volume,
    })
}

/// `ls -l`'s mode column: kind letter and `rwx` triplets with set-id and sticky bits.
pub fn mode_string(e: &Entry) -> String {
    let m = e.mode;
    let mut s = String::with_capacity(10);
    s.push(e.kind.letter());
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (m >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, m & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A guest filesystem error as a repository error, by kind.
pub fn guest(e: stasis_guestfs::Error) -> Error {
    use stasis_guestfs::ErrorKind as K;
    match e.kind() {
        K::NotFound => Error::NotFound(e.to_string()),
        K::NotADirectory | K::NotAFile | K::Invalid => Error::Invalid(e.to_string()),
        K::Corrupt | K::Unsupported | K::Io => Error::Input(e.to_string()),
    }
}

/// What [`copy_out`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Copied {
    /// Regular files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Entries left out (devices, sockets: they need root or mean nothing here), by path.
    pub skipped: Vec<String>,
}

fn os(p: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(p))
}

fn times(e: &Entry) -> Timestamps {
    let t = Timespec {
        tv_sec: e.mtime,
        tv_nsec: i64::from(e.mtime_nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Copy `from` (a file, symlink or tree) of `vol` to `dest`, as `cp -r` would with
/// modes and mtimes kept (owners too when run as root): if `dest` is a directory, into
/// it under its own name. Nothing that exists is overwritten.
pub fn copy_out(vol: &Volume, from: &[u8], dest: &Path) -> Result<Copied> {
    let top = vol.fs.stat(from).map_err(guest)?;
    let target = if dest.is_dir() && top.name != b"/" {
        dest.join(os(&top.name))
    } else {
        dest.to_path_buf()
    };
    let mut out = Copied::default();
    copy_entry(vol, from, &top, &target, &mut out)?;
    Ok(out)
}

fn copy_entry(vol: &Volume, from: &[u8], e: &Entry, to: &Path, out: &mut Copied) -> Result<()> {
    let io = |what: &str, err: std::io::Error| Error::io(format!("{what} {}", to.display()), err);
    match e.kind {
        Kind::Dir => {
            match std::fs::create_dir(to) {
                Ok(()) => out.dirs += 1,
                Err(err)
                    if err.kind() == std::io::ErrorKind::AlreadyExists
                        && to.is_dir()
                        && e.name == b"/" => {}
                Err(err) => return Err(io("creating", err)),
            }
            for child in vol.fs.list(from).map_err(guest)? {
                let p = stasis_guestfs::join(from, &child.name);
                copy_entry(vol, &p, &child, &to.join(os(&child.name)), out)?;
            }
        }
        Kind::File => {
            let f = File::options()
                .write(true)
                .create_new(true)
                .open(to)
                .map_err(|err| io("creating", err))?;
            let mut at = 0u64;
            vol.fs
                .read_file(from, &mut |b| {
                    // Zero pages become holes, as the guest's sparse files were.
                    for (i, page) in b.chunks(4096).enumerate() {
                        if page.iter().all(|x| *x == 0) {
                            continue;
                        }
                        std::os::unix::fs::FileExt::write_all_at(&f, page, at + i as u64 * 4096)
                            .map_err(|err| {
                                stasis_guestfs::Error::new(
                                    stasis_guestfs::ErrorKind::Io,
                                    format!("writing {}: {err}", to.display()),
                                )
                            })?;
                    }
                    at += b.len() as u64;
                    Ok(())
                })
                .map_err(guest)?;
            f.set_len(e.size).map_err(|err| io("sizing", err))?;
            out.files += 1;
            out.bytes += e.size;
            finish(f.as_fd(), e, to)?;
            return Ok(());
        }
        Kind::Symlink => {
            let target = e.target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(os(&target), to).map_err(|err| io("linking", err))?;
            out.symlinks += 1;
            let _ = rustix::fs::chownat(
                rustix::fs::CWD,
                to,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            );
            let _ =
                rustix::fs::utimensat(rustix::fs::CWD, to, &times(e), AtFlags::SYMLINK_NOFOLLOW);
            return Ok(());
        }
        Kind::Fifo => {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                to,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(u32::from(e.mode)),
                0,
            )
            .map_err(|err| io("making the fifo", err.into()))?;
        }
        Kind::CharDevice | Kind::BlockDevice | Kind::Socket => {
            out.skipped.push(String::from_utf8_lossy(from).into_owned());
            return Ok(());
        }
    }
    let fd = rustix::fs::open(
        to,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|err| io("opening", err.into()))?;
    finish(fd.as_fd(), e, to)
}

/// Mode, owner (when permitted) and mtime, in that order (a chown clears set-id bits).
fn finish(fd: std::os::fd::BorrowedFd<'_>, e: &Entry, to: &Path) -> Result<()> {
    let _ = rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(e.uid)),
        Some(rustix::fs::Gid::from_raw(e.gid)),
    );
    rustix::fs::fchmod(fd, Mode::from_raw_mode(u32::from(e.mode)))
        .map_err(|err| Error::io(format!("setting the mode of {}", to.display()), err.into()))?;
    rustix::fs::futimens(fd, &times(e))
        .map_err(|err| Error::io(format!("setting the mtime of {}", to.display()), err.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (String, Option<String>, Option<String>, String) {
        let p: GuestPath = s.parse().expect(s);
        (
            p.snap,
            p.disk,
            p.volume,
            String::from_utf8(p.path).expect("utf8"),
        )
    }

    #[test]
    fn guest_paths_parse() {
        assert_eq!(
            parse("web/day3:/etc/hosts"),
            ("web/day3".into(), None, None, "/etc/hosts".into())
        );
        assert_eq!(
            parse("abc:root:/"),
            ("abc".into(), Some("root".into()), None, "/".into())
        );
        assert_eq!(
            parse("abc:a:b/p2:/x:/y"),
            (
                "abc".into(),
                Some("a:b".into()),
                Some("p2".into()),
                "/x:/y".into()
            )
        );
        for bad in [
            "",
            "web",
            ":/x",
            "web:",
            "web:root",
            "web:root/q2:/x",
            "web:etc/hosts",
        ] {
            assert!(bad.parse::<GuestPath>().is_err(), "{bad}");
        }
    }
}
