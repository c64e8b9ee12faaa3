//! Fork: a new VM from a snapshot. Its files are prepared in a directory: with a
//! running `stasis mount`, disks become qcow2 overlays backed by the mount's read-only
//! files and other files links into the mount; without one, sparse byte-identical
//! copies. Then the catalog records the VM as forked from the snapshot, so it may
//! branch from it. If anything fails, the files made so far are removed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use stasis_catalog::{Catalog, Snapshot, Vm, validate_name};
use stasis_store::{PayloadReader, Role, Store};

use crate::error::{Error, Result};

/// Where the new VM's files come from.
#[derive(Clone, Debug)]
pub enum Files {
    /// A stasis mount of this repository, at this mountpoint.
    Mount(PathBuf),
    /// Sparse copies restored from the store.
    Copy,
}

/// One prepared file.
#[derive(Clone, Debug, Serialize)]
pub struct Prepared {
    /// The payload's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The file made.
    pub path: PathBuf,
    /// `qcow2 overlay`, `link into the mount` or `sparse copy`.
    pub how: &'static str,
    /// The mount file it is backed by or links to.
    pub backing: Option<PathBuf>,
}

/// A forked VM.
#[derive(Clone, Debug, Serialize)]
pub struct Forked {
    /// The new VM's record.
    pub vm: Vm,
    /// Its files.
    pub files: Vec<Prepared>,
}

/// Fork `snap` into a new VM named `new_vm`, its files in `dir` (created; must not hold
/// them already).
pub fn fork(
    store: &Store,
    catalog: &mut Catalog,
    snap: &Snapshot,
    new_vm: &str,
    dir: &Path,
    files: &Files,
    actor: &str,
) -> Result<Forked> {
    validate_name(new_vm).map_err(|e| Error::Catalog(e.context("the new VM's name")))?;
    if catalog.vm(new_vm)?.is_some() {
        return Err(Error::Conflict(format!("VM {new_vm} already exists")));
    }
    // The mount is checked first, so nothing is written when it is not usable.
    let mount = match files {
        Files::Copy => None,
        Files::Mount(m) => {
            let d = m.join(stasis_catalog::layout::snapshot_dir(&snap.id));
            if !d.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} does not show snapshot {} (is it a stasis mount of this repository?)",
                    m.display(),
                    snap.id
                )));
            }
            Some(d)
        }
    };
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut out: Vec<Prepared> = Vec::new();
    let result = (|| -> Result<Vm> {
        for p in &snap.payloads {
            out.push(prepare(store, p, mount.as_deref(), dir)?);
        }
        Ok(catalog.fork_vm(&snap.id, new_vm, actor)?)
    })();
    match result {
        Ok(vm) => Ok(Forked { vm, files: out }),
        Err(e) => {
            for p in &out {
                let _ = std::fs::remove_file(&p.path);
            }
            if made_dir {
                let _ = std::fs::remove_dir(dir);
            }
            Err(e)
        }
    }
}

fn prepare(
    store: &Store,
    p: &stasis_catalog::Payload,
    mount: Option<&Path>,
    dir: &Path,
) -> Result<Prepared> {
    let (path, how, backing) = match (mount, p.role) {
        (Some(m), Role::Disk) => {
            let backing = m.join(&p.name);
            let target = dir.join(format!("{}.qcow2", p.name));
            refuse_existing(&target)?;
            let st = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&backing)
                .arg(&target)
                .status()
                .map_err(|e| Error::io("running qemu-img (install qemu-utils)", e))?;
            if !st.success() {
                let _ = std::fs::remove_file(&target);
                return Err(Error::io(
                    format!("qemu-img create failed for {}", target.display()),
                    std::io::Error::other("qemu-img failed"),
                ));
            }
            (target, "qcow2 overlay", Some(backing))
        }
        (Some(m), _) => {
            let target = dir.join(&p.name);
            refuse_existing(&target)?;
            std::os::unix::fs::symlink(m.join(&p.name), &target)
                .map_err(|e| Error::io(format!("cannot link {}", target.display()), e))?;
            (target, "link into the mount", Some(m.join(&p.name)))
        }
        (None, _) => {
            let target = dir.join(&p.name);
            refuse_existing(&target)?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
            let restored =
                PayloadReader::new(store, p.manifest).and_then(|r| r.restore(&f, &|_| {}));
            if let Err(e) = restored {
                let _ = std::fs::remove_file(&target);
                return Err(e.into());
            }
            (target, "sparse copy", None)
        }
    };
    Ok(Prepared {
        name: p.name.clone(),
        role: p.role,
        path,
        how,
        backing,
    })
}

fn refuse_existing(p: &Path) -> Result<()> {
    if p.symlink_metadata().is_ok() {
        return Err(Error::Conflict(format!(
            "{} exists; fork into an empty directory",
            p.display()
        )));
    }
    Ok(())
}
