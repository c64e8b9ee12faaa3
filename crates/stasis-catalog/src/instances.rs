//! Instances: the VMs whose files stasis snapshots, registered with their hypervisor,
//! each file by role and name, and the commands run around a snapshot of them. A
//! client that knows only a VM's name (hypeman's) snapshots and restores it by that
//! name; the files' paths are the operator's, never a caller's.
//!
//! An instance is a VM (a row of `vms`, with its tenant) plus a row of `instances` and
//! its rows of `instance_files`. Registering a VM that has snapshots already keeps
//! them; removing an instance keeps its VM and snapshots.

use stasis_store::Role;

use crate::error::{Error, ErrorKind, Result};
use crate::sql::{Db, args};
use crate::{Catalog, Hypervisor, Vm, check_tenant, decode, ensure_vm, now, validate_name};

/// One registered file of an instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InstanceFile {
    /// What the file is.
    #[serde(serialize_with = "ser_role")]
    pub role: Role,
    /// Its name in a snapshot (a payload's name).
    pub name: String,
    /// Where it is on the host that snapshots it (absolute).
    pub path: String,
}

fn ser_role<S: serde::Serializer>(r: &Role, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

/// A registered instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// Its VM.
    pub vm: Vm,
    /// The hypervisor that runs it.
    pub hypervisor: Hypervisor,
    /// Its files, in the order given.
    pub files: Vec<InstanceFile>,
    /// Run (by `sh -c`) before a snapshot: pauses the VM and writes its state out.
    pub pre_snapshot: Option<String>,
    /// Run after the snapshot's files are read: resumes the VM.
    pub post_snapshot: Option<String>,
    /// Run before a restore replaces its files: stops the VM.
    pub pre_restore: Option<String>,
    /// Run after a restore put its files in place: starts the VM from them in the
    /// state asked for (`STASIS_TARGET_STATE`).
    pub post_restore: Option<String>,
    /// When it was registered.
    pub registered_at: String,
}

/// An instance to register.
#[derive(Clone, Debug)]
pub struct NewInstance {
    /// The VM's name (made if new).
    pub vm: String,
    /// Its tenant (`None`: [`crate::DEFAULT_TENANT`] for a new VM, else the VM's own).
    pub tenant: Option<String>,
    /// See [`Instance::hypervisor`].
    pub hypervisor: Hypervisor,
    /// See [`Instance::files`].
    pub files: Vec<InstanceFile>,
    /// See [`Instance::pre_snapshot`].
    pub pre_snapshot: Option<String>,
    /// See [`Instance::post_snapshot`].
    pub post_snapshot: Option<String>,
    /// See [`Instance::pre_restore`].
    pub pre_restore: Option<String>,
    /// See [`Instance::post_restore`].
    pub post_restore: Option<String>,
}

fn check_new(new: &NewInstance) -> Result<()> {
    validate_name(&new.vm).map_err(|e| e.context("VM name"))?;
    if new.files.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "an instance needs at least one file (a disk, a memory file or a state file)",
        ));
    }
    crate::check_payload_names(new.files.iter().map(|f| f.name.as_str()))?;
    for f in &new.files {
        if !f.path.starts_with('/') || f.path.contains('\0') {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("file {}: {:?} is not an absolute path", f.name, f.path),
            ));
        }
    }
    if new.files.iter().filter(|f| f.role == Role::Memory).count() > 1 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "an instance has at most one memory file",
        ));
    }
    for hook in [
        &new.pre_snapshot,
        &new.post_snapshot,
        &new.pre_restore,
        &new.post_restore,
    ]
    .into_iter()
    .flatten()
    {
        if hook.trim().is_empty() || hook.contains('\0') {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a hook is a non-empty shell command",
            ));
        }
    }
    Ok(())
}

impl Catalog {
    /// Register an instance (its VM made if new). A VM that is an instance already is a
    /// conflict; one of another tenant does not exist for `new.tenant`.
    pub fn register_instance(&mut self, new: &NewInstance) -> Result<Instance> {
        check_new(new)?;
        let at = now();
        self.write(|db| {
            let vm_id = ensure_vm(db, &new.vm, &at, None, new.tenant.as_deref())?;
            if instance_row(db, &vm_id)?.is_some() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("VM {} is an instance already", new.vm),
                ));
            }
            db.exec(
                "registering the instance",
                "INSERT INTO instances (vm_id, hypervisor, pre_snapshot, post_snapshot, \
                 pre_restore, post_restore, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![&vm_id, new.hypervisor.as_str(), &new.pre_snapshot, &new.post_snapshot,
                    &new.pre_restore, &new.post_restore, &at],
            )?;
            for (pos, f) in new.files.iter().enumerate() {
                db.exec(
                    "registering the instance's files",
                    "INSERT INTO instance_files (vm_id, position, role, name, path) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![&vm_id, pos as i64, f.role.name(), &f.name, &f.path],
                )?;
            }
            Ok(())
        })?;
        self.instance(&new.vm)?
            .ok_or_else(|| Error::corrupt("the new instance vanished"))
    }

    /// The instance of VM `vm` (name or id), if it is one.
    pub fn instance(&self, vm: &str) -> Result<Option<Instance>> {
        let Some(v) = self.vm(vm)? else {
            return Ok(None);
        };
        let mut db = self.db()?;
        let Some(row) = instance_row(&mut db, &v.id)? else {
            return Ok(None);
        };
        let rows = db.rows(
            "reading an instance's files",
            &format!(
                "SELECT {} FROM instance_files WHERE vm_id = ?1 ORDER BY position",
                decode::select(decode::INSTANCE_FILE_COLUMNS)
            ),
            args![&v.id],
        )?;
        let files = decode::all(&rows, decode::instance_file)?;
        Ok(Some(Instance {
            vm: v,
            hypervisor: row.hypervisor,
            files,
            pre_snapshot: row.pre_snapshot,
            post_snapshot: row.post_snapshot,
            pre_restore: row.pre_restore,
            post_restore: row.post_restore,
            registered_at: row.created_at,
        }))
    }

    /// The instance `vm` as tenant `tenant` sees it (`None`: any tenant's): another
    /// tenant's is one that does not exist.
    pub fn instance_of(&self, vm: &str, tenant: Option<&str>) -> Result<Option<Instance>> {
        match self.instance(vm)? {
            Some(i) if check_tenant(&i.vm, tenant).is_ok() => Ok(Some(i)),
            _ => Ok(None),
        }
    }

    /// Every instance, by VM name.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        let ids: Vec<String> = {
            let rows = self.db()?.rows(
                "listing instances",
                "SELECT v.name AS id FROM instances i JOIN vms v ON v.id = i.vm_id ORDER BY v.name",
                &[],
            )?;
            decode::all(&rows, decode::snapshot_id)?
        };
        let mut out = Vec::with_capacity(ids.len());
        for name in ids {
            if let Some(i) = self.instance(&name)? {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Record that instance `vm` now runs on `hypervisor` (a Stopped snapshot restored
    /// for another hypervisor).
    pub fn set_instance_hypervisor(&mut self, vm: &str, hypervisor: Hypervisor) -> Result<()> {
        let v = self
            .vm(vm)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance {vm:?}")))?;
        let n = self.write(|db| {
            db.exec(
                "changing the instance's hypervisor",
                "UPDATE instances SET hypervisor = ?1 WHERE vm_id = ?2",
                args![hypervisor.as_str(), &v.id],
            )
        })?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no instance {vm:?}"),
            ));
        }
        Ok(())
    }

    /// Forget that VM `vm` is an instance (and its schedule); its VM and snapshots stay.
    pub fn unregister_instance(&mut self, vm: &str) -> Result<()> {
        let v = self
            .vm(vm)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance {vm:?}")))?;
        self.write(|db| {
            // Its schedule goes with it (a schedule snapshots an instance's files).
            db.exec(
                "removing the instance's schedule",
                "DELETE FROM schedules WHERE vm_id = ?1",
                args![&v.id],
            )?;
            db.exec(
                "removing the instance's files",
                "DELETE FROM instance_files WHERE vm_id = ?1",
                args![&v.id],
            )?;
            let n = db.exec(
                "removing the instance",
                "DELETE FROM instances WHERE vm_id = ?1",
                args![&v.id],
            )?;
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no instance {vm:?}"),
                ));
            }
            Ok(())
        })
    }
}

/// The `instances` row of VM `vm_id`.
fn instance_row(db: &mut Db, vm_id: &str) -> Result<Option<decode::InstanceRow>> {
    let rows = db.rows(
        "reading an instance",
        &format!(
            "SELECT {} FROM instances WHERE vm_id = ?1",
            decode::select(decode::INSTANCE_COLUMNS)
        ),
        args![vm_id],
    )?;
    decode::first(&rows, decode::instance)
}
