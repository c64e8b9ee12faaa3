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
//! Every hook is bounded by [`HOOK_TIMEOUT`] (killed past it) and its output is kept
//! for the error message (its last [`HOOK_OUTPUT`] bytes).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stasis_catalog::{Catalog, Instance, Kind};
use stasis_store::{Role, Store};

use crate::create::{self, CreateSpec, Created, InputSpec, Paths, Progress};
use crate::error::{Error, Result};

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
