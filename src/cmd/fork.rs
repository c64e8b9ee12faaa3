//! `stasis fork`: clone a VM from a snapshot, booting from the mount.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use stasis_catalog::validate_name;
use stasis_store::config::Role;
use stasis_store::reader;

use crate::cmd::mount::running_mount;
use crate::output::print_json;
use crate::repo::{Context, actor};

/// Clone a VM from a snapshot.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot to fork from: an id, VM/NAME or VM.
    snap: String,
    /// The new VM's name.
    new_vm: String,
    /// The directory to prepare (created; must not hold the files already).
    dir: PathBuf,
    /// Copy every file (sparse, byte-identical) instead of using the mount.
    #[arg(long)]
    copy: bool,
    /// The stasis mount to use (default: this repository's running mount).
    #[arg(long, value_name = "MOUNTPOINT")]
    mount: Option<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct Prepared {
    name: String,
    role: Role,
    path: PathBuf,
    how: &'static str,
    backing: Option<PathBuf>,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    validate_name(&a.new_vm).context("the new VM's name")?;
    let mut repo = ctx.open()?;
    let snap = repo.catalog.resolve(&a.snap)?;
    if repo.catalog.vm(&a.new_vm)?.is_some() {
        bail!("VM {} already exists", a.new_vm);
    }
    // The mount first, so nothing is written when there is none.
    let mount = if a.copy {
        None
    } else {
        let m = match &a.mount {
            Some(m) => m.clone(),
            None => running_mount(&repo.path)?.with_context(|| {
                "no running `stasis mount` of this repository: start one, pass --mount MOUNTPOINT, or use --copy".to_string()
            })?,
        };
        let dir = m.join("snapshots").join(&snap.id);
        if !dir.is_dir() {
            bail!(
                "{} does not show snapshot {} (is it a stasis mount of this repository?)",
                m.display(),
                snap.id
            );
        }
        Some(dir)
    };
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let mut out = Vec::new();
    for p in &snap.payloads {
        let (target, how, backing) = match (&mount, p.role) {
            (Some(m), Role::Disk) => {
                let backing = m.join(&p.name);
                let target = a.dir.join(format!("{}.qcow2", p.name));
                refuse_existing(&target)?;
                let st = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(&backing)
                    .arg(&target)
                    .status()
                    .context("running qemu-img (install qemu-utils)")?;
                if !st.success() {
                    bail!("qemu-img create failed for {}", target.display());
                }
                (target, "qcow2 overlay", Some(backing))
            }
            (Some(m), _) => {
                let target = a.dir.join(&p.name);
                refuse_existing(&target)?;
                std::os::unix::fs::symlink(m.join(&p.name), &target)
                    .with_context(|| format!("cannot link {}", target.display()))?;
                (target, "link into the mount", Some(m.join(&p.name)))
            }
            (None, _) => {
                let target = a.dir.join(&p.name);
                refuse_existing(&target)?;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .with_context(|| format!("cannot write {}", target.display()))?;
                reader::restore(&repo.store, &p.manifest, &f, &|_| {})?;
                (target, "sparse copy", None)
            }
        };
        out.push(Prepared {
            name: p.name.clone(),
            role: p.role,
            path: target,
            how,
            backing,
        });
    }
    let vm = repo.catalog.fork_vm(&snap.id, &a.new_vm, &actor())?;
    if ctx.json {
        return print_json(&serde_json::json!({ "vm": vm, "snapshot": snap.id, "files": out }));
    }
    println!(
        "forked VM {} from {}/{} ({})",
        vm.name, snap.source_instance_name, snap.name, snap.id
    );
    for p in &out {
        match &p.backing {
            Some(b) => println!("  {}  {} of {}", p.path.display(), p.how, b.display()),
            None => println!("  {}  {}", p.path.display(), p.how),
        }
    }
    println!(
        "commit it back with: stasis create {} NAME --parent {} --disk ...",
        vm.name, snap.id
    );
    Ok(())
}

fn refuse_existing(p: &Path) -> Result<()> {
    if p.symlink_metadata().is_ok() {
        bail!("{} exists; fork into an empty directory", p.display());
    }
    Ok(())
}
