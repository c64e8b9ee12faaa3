//! Snapshots of registered instances ([`stasis_catalog::Instance`]): the caller names
//! only the VM; its files, hypervisor and hooks come from the catalog.
//!
//! The order, and what a failure at each step leaves:
//! 1. the **pre-snapshot hook** (`sh -c`, with `STASIS_VM`, `STASIS_SNAPSHOT`,
//!    `STASIS_KIND`, `STASIS_HYPERVISOR` and `STASIS_TENANT` set): pauses the VM and
//!    writes its state out. Failing, nothing else runs and nothing is recorded.
//! 2. the files are opened and stored (as `stasis create` stores them).
//! 3. the **post-snapshot hook** (same environment): resumes the VM. It runs right
//!    before the snapshot is recorded; failing, nothing is recorded (the stored blocks
//!    are garbage for gc). If step 2 failed, it still runs, so the VM is resumed, and
//!    the step-2 error is the one reported.
//!
//! A **restore** ([`restore`]) puts a snapshot of the instance's VM back at the
//! instance's paths, as hypeman's `POST /instances/{id}/snapshots/{sid}/restore`:
//! 1. checks: the snapshot is the instance's VM's and active; each of its files is a
//!    registered file of the instance (by name); the target state and hypervisor are
//!    possible (a Standby snapshot restores only with the hypervisor that wrote it;
//!    Standby needs a Standby snapshot; Running needs a post-restore hook, which is
//!    what starts the VM).
//! 2. each file is written beside its target as `.NAME.stasis-restore` (made with
//!    `openat` in its directory, opened beneath the tenant's roots when confined): a
//!    disk as a qcow2 overlay on a running `stasis mount` when one runs and the
//!    instance's disk is qcow2 (or missing), else a sparse copy; memory and state as
//!    sparse copies the hypervisor can restore from (a Stopped restore puts back the
//!    disks only), with the mode and owner of the files they replace. The first
//!    file's directory is `flock`ed meanwhile: a second restore of the instance is
//!    refused. Failing, the temporary files are removed and nothing else changed.
//! 3. the **pre-restore hook** (`STASIS_SNAPSHOT_ID` and `STASIS_TARGET_STATE` set as
//!    well): stops the VM. Failing, the temporary files are removed.
//! 4. each temporary file is renamed over its target, and the directory synced.
//! 5. the catalog: the snapshot becomes the VM's current one (the next snapshot
//!    branches from it), `restored` on its timeline, the instance's hypervisor set to
//!    the target's.
//! 6. the **post-restore hook**: starts the VM from the files in the target state. Its
//!    failure is reported ([`Restored::post_restore_error`]), but the files stay
//!    restored and recorded.
//!
//! Every hook is bounded by [`HOOK_TIMEOUT`] (killed past it) and its output is kept
//! for the error message (its last [`HOOK_OUTPUT`] bytes).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;
use stasis_catalog::{Catalog, Hypervisor, Instance, Kind, Snapshot, Status};
use stasis_store::{PayloadReader, Role, Store};

use crate::create::{self, CreateSpec, Created, InputSpec, Paths, Progress};
use crate::error::{Error, Result};
use crate::fork::{Files, Prepared};

/// The longest a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of a failed hook's output an error shows.
pub const HOOK_OUTPUT: usize = 2000;

/// The environment of `instance`'s hooks for snapshot `name` of `kind`.
fn hook_env(instance: &Instance, name: &str, kind: Kind) -> Vec<(&'static str, String)> {
    vec![
        ("STASIS_VM", instance.vm.name.clone()),
        ("STASIS_SNAPSHOT", name.to_string()),
        ("STASIS_KIND", kind.to_string()),
        ("STASIS_HYPERVISOR", instance.hypervisor.to_string()),
        ("STASIS_TENANT", instance.vm.tenant.clone()),
    ]
}

/// Run `cmd` by `sh -c` with `env`; an error with its status and output if it fails,
/// runs past [`HOOK_TIMEOUT`] or cannot start.
pub fn run_hook(which: &str, cmd: &str, env: &[(&'static str, String)]) -> Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Hook(format!("the {which} hook could not start: {e}")))?;
    // Read both pipes while waiting, so a talkative hook never blocks on a full pipe.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut p| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = p.read_to_end(&mut out);
            out
        })
    })
    .collect();
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if started.elapsed() > HOOK_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "ran past {} s and was killed",
                    HOOK_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("could not be waited for: {e}")),
        }
    };
    let mut output = Vec::new();
    for r in readers {
        output.extend(r.join().unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&output);
    let text = text.trim();
    let tail = match text.char_indices().rev().nth(HOOK_OUTPUT) {
        Some((at, _)) => &text[at..],
        None => text,
    };
    let why = match status {
        Ok(st) if st.success() => return Ok(()),
        Ok(st) => format!("failed ({st})"),
        Err(why) => why,
    };
    Err(Error::Hook(if tail.is_empty() {
        format!("the {which} hook {why}")
    } else {
        format!("the {which} hook {why}: {tail}")
    }))
}

/// Snapshot `instance`: `spec` without inputs (its VM is the instance's; its
/// hypervisor, unless given, the instance's), then the steps of the module doc. The
/// files are opened as `paths` allows.
pub fn snapshot(
    store: &Store,
    catalog: &mut Catalog,
    instance: &Instance,
    mut spec: CreateSpec,
    paths: Paths<'_>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Created> {
    if !spec.inputs.is_empty() {
        return Err(Error::Invalid(
            "a snapshot of an instance takes its registered files, not others".into(),
        ));
    }
    spec.vm = instance.vm.name.clone();
    if spec.hypervisor.is_none() {
        spec.hypervisor = Some(instance.hypervisor.to_string());
    }
    let name = spec
        .name
        .get_or_insert_with(|| format!("snap-{}", &stasis_catalog::new_id()[..12]))
        .clone();
    let kind = match spec.kind.as_deref() {
        Some(k) => k
            .parse::<Kind>()
            .map_err(|e| Error::Invalid(format!("kind: {e}")))?,
        None if instance.files.iter().any(|f| f.role == Role::Memory) => Kind::Standby,
        None => Kind::Stopped,
    };
    spec.kind = Some(kind.to_string());
    spec.inputs = instance
        .files
        .iter()
        .map(|f| InputSpec {
            label: format!("instance file {}", f.name),
            role: f.role.name().to_string(),
            name: Some(f.name.clone()),
            path: f.path.clone().into(),
            format: None,
        })
        .collect();
    let env = hook_env(instance, &name, kind);
    if let Some(pre) = &instance.pre_snapshot {
        run_hook("pre-snapshot", pre, &env)?;
    }
    let post_ran = Arc::new(AtomicBool::new(false));
    let post = instance.post_snapshot.clone();
    let resume = {
        let (post, env, ran) = (post.clone(), env.clone(), post_ran.clone());
        move || -> Result<()> {
            ran.store(true, Ordering::SeqCst);
            match &post {
                Some(cmd) => run_hook("post-snapshot", cmd, &env),
                None => Ok(()),
            }
        }
    };
    let created = spec
        .into_request(store.config(), paths)
        .and_then(|mut req| {
            req.before_record = Some(Box::new(resume));
            create::create(store, catalog, req, progress)
        });
    if created.is_err()
        && !post_ran.load(Ordering::SeqCst)
        && let Some(cmd) = &post
    {
        // Resume the VM; the error that stopped the snapshot is the one to report.
        if let Err(e) = run_hook("post-snapshot", cmd, &env) {
            tracing::warn!(vm = %instance.vm.name, "after a failed snapshot: {e}");
        }
    }
    created
}

/// The state a restored instance is left in (hypeman's `target_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TargetState {
    /// Files in place, no VM runs; it boots from its disks.
    Stopped,
    /// Files in place, no VM runs; it resumes from its memory and state.
    Standby,
    /// The post-restore hook started it from the files.
    Running,
}

impl TargetState {
    /// hypeman's name: `Stopped`, `Standby` or `Running`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Stopped => "Stopped",
            TargetState::Standby => "Standby",
            TargetState::Running => "Running",
        }
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TargetState {
    type Err = Error;

    fn from_str(s: &str) -> Result<TargetState> {
        match s {
            "Stopped" => Ok(TargetState::Stopped),
            "Standby" => Ok(TargetState::Standby),
            "Running" => Ok(TargetState::Running),
            _ => Err(Error::Invalid(format!(
                "target state {s:?}: expected Stopped, Standby or Running"
            ))),
        }
    }
}

/// What a restore is asked for.
#[derive(Clone, Debug)]
pub struct RestoreRequest<'a> {
    /// `None`: Standby snapshots give Running when the instance has a post-restore
    /// hook, else Standby; Stopped snapshots give Stopped.
    pub target_state: Option<TargetState>,
    /// `None`: the snapshot's (or the instance's) hypervisor.
    pub target_hypervisor: Option<Hypervisor>,
    /// Whether disks may be qcow2 overlays on a running mount.
    pub files: &'a Files,
    /// Where the instance's files may be written (the tenant's roots on a server).
    pub paths: Paths<'a>,
    /// Who restores, for the timeline.
    pub actor: &'a str,
}

/// A restored instance.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    /// The instance, as it is now (its hypervisor may have changed).
    #[serde(skip)]
    pub instance: Instance,
    /// The snapshot restored.
    pub snapshot: String,
    /// The state it was left in.
    pub state: TargetState,
    /// The hypervisor to run it with.
    pub hypervisor: Hypervisor,
    /// The files put back.
    pub files: Vec<Prepared>,
    /// Why the post-restore hook failed, if it did (the files are restored all the
    /// same, and the VM may not run).
    pub post_restore_error: Option<String>,
}

/// One file to put back: its directory (held open), its name there, and the
/// temporary file written beside it.
struct Target {
    dir: OwnedFd,
    base: String,
    tmp: String,
    shown: PathBuf,
    payload: stasis_catalog::Payload,
}

fn rio(what: String, e: rustix::io::Errno) -> Error {
    Error::io(what, e.into())
}

/// The directory of `path`, opened as `paths` allows.
fn open_target(paths: Paths<'_>, path: &Path, p: &stasis_catalog::Payload) -> Result<Target> {
    let (Some(parent), Some(base)) = (path.parent(), path.file_name().and_then(|b| b.to_str()))
    else {
        return Err(Error::Invalid(format!(
            "instance file {} has no directory and name",
            path.display()
        )));
    };
    let dir = match paths {
        Paths::Host => rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| rio(format!("opening {}", parent.display()), e))?,
        Paths::Roots(roots, scope) => roots
            .open_dir(scope, parent)
            .map_err(|r| Error::Refused(r.reason))?,
    };
    Ok(Target {
        dir,
        tmp: format!(".{base}.stasis-restore"),
        base: base.to_string(),
        shown: path.to_path_buf(),
        payload: p.clone(),
    })
}

impl Target {
    /// The existing target's mode, owner and whether it is a qcow2 image, if it exists.
    fn existing(&self) -> Option<(rustix::fs::Stat, bool)> {
        let st =
            rustix::fs::statat(&self.dir, self.base.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Some((st, false));
        }
        let f = rustix::fs::openat(
            &self.dir,
            self.base.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        Some((st, crate::qcow2::is_qcow2(&File::from(f))))
    }

    fn remove_tmp(&self) {
        let _ = rustix::fs::unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
    }

    /// Write the temporary file: an overlay backed by `backing`, or a sparse copy.
    fn write(&self, store: &Store, backing: Option<&Path>) -> Result<&'static str> {
        self.remove_tmp();
        let existing = self.existing();
        let how = match backing {
            Some(b) => {
                // qemu-img writes by name: the name of this very directory, through
                // this process's descriptor of it.
                let tmp_path = PathBuf::from(format!(
                    "/proc/{}/fd/{}/{}",
                    std::process::id(),
                    self.dir.as_raw_fd(),
                    self.tmp
                ));
                let st = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(b)
                    .arg(&tmp_path)
                    .stdin(Stdio::null())
                    .status()
                    .map_err(|e| Error::io("running qemu-img (install qemu-utils)", e))?;
                if !st.success() {
                    self.remove_tmp();
                    return Err(Error::io(
                        format!("qemu-img create failed for {}", self.shown.display()),
                        std::io::Error::other("qemu-img failed"),
                    ));
                }
                "qcow2 overlay"
            }
            None => {
                let mode = existing
                    .as_ref()
                    .map_or(0o644, |(st, _)| st.st_mode & 0o7777);
                let fd = rustix::fs::openat(
                    &self.dir,
                    self.tmp.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode),
                )
                .map_err(|e| rio(format!("writing beside {}", self.shown.display()), e))?;
                let f = File::from(fd);
                let written = PayloadReader::new(store, self.payload.manifest)
                    .and_then(|r| r.restore(&f, &|_| {}))
                    .map_err(Error::from)
                    .and_then(|_| {
                        f.sync_all().map_err(|e| {
                            Error::io(format!("syncing beside {}", self.shown.display()), e)
                        })
                    });
                if let Err(e) = written {
                    self.remove_tmp();
                    return Err(e);
                }
                "sparse copy"
            }
        };
        if let Some((st, _)) = existing {
            // Keep the mode (whatever the umask) and the owner the hypervisor runs as
            // (only root may give files away), through a descriptor of the file just
            // made: never a name a tenant could have turned into a link meanwhile.
            let kept = rustix::fs::openat(
                &self.dir,
                self.tmp.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .and_then(|fd| {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
                let _ = rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::from_raw(st.st_uid)),
                    Some(rustix::fs::Gid::from_raw(st.st_gid)),
                );
                Ok(())
            });
            if let Err(e) = kept {
                self.remove_tmp();
                return Err(rio(format!("writing beside {}", self.shown.display()), e));
            }
        }
        Ok(how)
    }

    fn commit(&self) -> Result<()> {
        rustix::fs::renameat(&self.dir, self.tmp.as_str(), &self.dir, self.base.as_str())
            .map_err(|e| rio(format!("replacing {}", self.shown.display()), e))?;
        rustix::fs::fsync(&self.dir).map_err(|e| {
            rio(
                format!("syncing the directory of {}", self.shown.display()),
                e,
            )
        })
    }
}

/// Restore `snap` into `instance`: the steps of the module doc.
pub fn restore(
    store: &Store,
    catalog: &mut Catalog,
    instance: &Instance,
    snap: &Snapshot,
    req: &RestoreRequest<'_>,
) -> Result<Restored> {
    if snap.source_instance_id != instance.vm.id {
        return Err(Error::Conflict(format!(
            "snapshot {} is of VM {}, not of instance {}",
            snap.id, snap.source_instance_name, instance.vm.name
        )));
    }
    if snap.status != Status::Active {
        return Err(Error::Conflict(format!(
            "snapshot {} is {}, not active",
            snap.id, snap.status
        )));
    }
    let wrote = snap.source_hypervisor.unwrap_or(instance.hypervisor);
    let state = match (req.target_state, snap.kind) {
        (Some(TargetState::Standby), Kind::Stopped) => {
            return Err(Error::Conflict(
                "a Stopped snapshot holds no memory: it cannot give a Standby instance".into(),
            ));
        }
        (Some(s), _) => s,
        (None, Kind::Standby) if instance.post_restore.is_some() => TargetState::Running,
        (None, Kind::Standby) => TargetState::Standby,
        (None, Kind::Stopped) => TargetState::Stopped,
    };
    if state == TargetState::Running && instance.post_restore.is_none() {
        return Err(Error::Conflict(format!(
            "instance {} has no post-restore hook to start it: restore Stopped or Standby, or register one (stasis instance add --post-restore)",
            instance.vm.name
        )));
    }
    let hypervisor = req.target_hypervisor.unwrap_or(wrote);
    if hypervisor != wrote && snap.kind == Kind::Standby && state != TargetState::Stopped {
        return Err(Error::Conflict(
            "a Standby snapshot resumes only on the hypervisor that wrote it".into(),
        ));
    }
    let mut targets = Vec::with_capacity(snap.payloads.len());
    for p in &snap.payloads {
        let Some(f) = instance.files.iter().find(|f| f.name == p.name) else {
            return Err(Error::Conflict(format!(
                "snapshot {} holds {}, which instance {} does not register",
                snap.id, p.name, instance.vm.name
            )));
        };
        // A Stopped target boots from its disks: memory and state are not put back.
        if state == TargetState::Stopped && p.role != Role::Disk {
            continue;
        }
        targets.push((open_target(req.paths, Path::new(&f.path), p)?, f.role));
    }
    // One restore of an instance at a time (in any process): the first file's
    // directory is locked while its temporary files exist.
    if let Some((t, _)) = targets.first() {
        rustix::fs::flock(&t.dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                Error::Conflict(format!(
                    "another restore of instance {} is running",
                    instance.vm.name
                ))
            },
        )?;
    }
    let mount = match req.files {
        Files::Copy => None,
        Files::Mount(m) => {
            let d = m.join(stasis_catalog::layout::snapshot_dir(&snap.id));
            d.is_dir().then_some(d)
        }
    };
    let mut written: Vec<(&Target, &'static str, Option<PathBuf>)> = Vec::new();
    let cleanup = |written: &[(&Target, &'static str, Option<PathBuf>)]| {
        for (t, _, _) in written {
            t.remove_tmp();
        }
    };
    for (t, role) in &targets {
        let backing = match (&mount, role) {
            (Some(m), Role::Disk) if t.existing().is_none_or(|(_, qcow2)| qcow2) => {
                Some(m.join(&t.payload.name))
            }
            _ => None,
        };
        match t.write(store, backing.as_deref()) {
            Ok(how) => written.push((t, how, backing)),
            Err(e) => {
                cleanup(&written);
                return Err(e);
            }
        }
    }
    let mut env = hook_env(instance, &snap.name, snap.kind);
    env.push(("STASIS_SNAPSHOT_ID", snap.id.clone()));
    env.push(("STASIS_TARGET_STATE", state.to_string()));
    env.retain(|(k, _)| *k != "STASIS_HYPERVISOR");
    env.push(("STASIS_HYPERVISOR", hypervisor.to_string()));
    if let Some(pre) = &instance.pre_restore
        && let Err(e) = run_hook("pre-restore", pre, &env)
    {
        cleanup(&written);
        return Err(e);
    }
    for (i, (t, _, _)) in written.iter().enumerate() {
        if let Err(e) = t.commit() {
            cleanup(&written[i..]);
            let done: Vec<String> = written[..i]
                .iter()
                .map(|(t, _, _)| t.shown.display().to_string())
                .collect();
            return Err(Error::io(
                format!(
                    "restoring instance {} (already replaced: {})",
                    instance.vm.name,
                    if done.is_empty() {
                        "none".to_string()
                    } else {
                        done.join(", ")
                    }
                ),
                std::io::Error::other(e.to_string()),
            ));
        }
    }
    catalog.revert(&snap.id, req.actor)?;
    catalog.record_event(
        &snap.id,
        "restored",
        req.actor,
        &format!(
            "instance {} restored {state} on {hypervisor}",
            instance.vm.name
        ),
    )?;
    if hypervisor != instance.hypervisor {
        catalog.set_instance_hypervisor(&instance.vm.id, hypervisor)?;
    }
    let files = written
        .iter()
        .map(|(t, how, backing)| Prepared {
            name: t.payload.name.clone(),
            role: t.payload.role,
            path: t.shown.clone(),
            how,
            backing: backing.clone(),
        })
        .collect();
    let post_restore_error = match &instance.post_restore {
        Some(post) => run_hook("post-restore", post, &env)
            .err()
            .map(|e| e.to_string()),
        None => None,
    };
    let mut instance = instance.clone();
    instance.hypervisor = hypervisor;
    Ok(Restored {
        instance,
        snapshot: snap.id.clone(),
        state,
        hypervisor,
        files,
        post_restore_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_report_status_and_output_and_see_their_environment() {
        let env = vec![("STASIS_VM", "web".to_string())];
        run_hook("test", "test \"$STASIS_VM\" = web", &env).expect("ok");
        let e = run_hook("test", "echo out; echo err >&2; exit 3", &env).expect_err("fails");
        let msg = e.to_string();
        assert!(msg.contains("test hook failed"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("out") && msg.contains("err"), "{msg}");
        let long = run_hook(
            "test",
            "head -c 100000 /dev/zero | tr '\\\\0' x; exit 1",
            &env,
        )
        .expect_err("fails")
        .to_string();
        assert!(long.len() < HOOK_OUTPUT + 200, "{} bytes", long.len());
    }
}
