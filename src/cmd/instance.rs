//! `stasis instance add|list|show|remove|restore`: the registry of VMs whose files stasis
//! snapshots by name (`stasis create VM NAME`, the API's create by instance).

use std::path::Path;

use anyhow::{Context as _, Result};
use stasis_catalog::{Hypervisor, Instance, InstanceFile, NewInstance};
use stasis_store::Role;

use crate::output::print_json;
use crate::repo::{Context, actor};

/// Register, list, show or remove instances.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Register a VM's files, hypervisor and snapshot hooks.
    Add(Box<AddArgs>),
    /// List instances.
    List,
    /// Show one instance.
    Show {
        /// The VM (name or id).
        vm: String,
    },
    /// Forget an instance (its VM and snapshots stay).
    Remove {
        /// The VM (name or id).
        vm: String,
    },
    /// Put one of the instance's snapshots back at its paths, between its restore
    /// hooks, and make it the VM's current snapshot (hypeman's restore).
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The VM (name or id).
    vm: String,
    /// The snapshot: an id, or a name of the VM's.
    snap: String,
    /// Stopped (disks only), Standby (memory and state too) or Running (Standby, then
    /// the post-restore hook starts it). Default: Running for a Standby snapshot when
    /// the instance has a post-restore hook, else its kind.
    #[arg(long, value_name = "STATE")]
    target_state: Option<String>,
    /// Another hypervisor (only to restore Stopped).
    #[arg(long, value_name = "HYPERVISOR")]
    target_hypervisor: Option<String>,
    /// Copy every disk (sparse) even when a mount runs.
    #[arg(long)]
    copy: bool,
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The VM's name (made if new; a VM with snapshots keeps them).
    vm: String,
    /// The hypervisor that runs it: cloud-hypervisor, firecracker, qemu, qemu-microvm, vz.
    #[arg(long)]
    hypervisor: String,
    /// Its tenant (default: `default` for a new VM, else the VM's own).
    #[arg(long)]
    tenant: Option<String>,
    /// A disk image: NAME=PATH, or PATH (named after its file); repeatable.
    #[arg(long, value_name = "[NAME=]PATH")]
    disk: Vec<String>,
    /// The guest memory file.
    #[arg(long, value_name = "[NAME=]PATH")]
    memory: Option<String>,
    /// A state file (vmstate, config.json, state.json, memory-ranges, ...); repeatable.
    #[arg(long, value_name = "[NAME=]PATH")]
    state: Vec<String>,
    /// Run by `sh -c` before each snapshot (pause the VM, write its state out), with
    /// STASIS_VM, STASIS_SNAPSHOT, STASIS_KIND and STASIS_HYPERVISOR in its
    /// environment; failing, it aborts the snapshot.
    #[arg(long, value_name = "CMD")]
    pre_snapshot: Option<String>,
    /// Run by `sh -c` after the snapshot's files were read (resume the VM), with the
    /// same environment.
    #[arg(long, value_name = "CMD")]
    post_snapshot: Option<String>,
    /// Run by `sh -c` before a restore replaces the files (stop the VM), with
    /// STASIS_VM, STASIS_SNAPSHOT, STASIS_SNAPSHOT_ID, STASIS_KIND, STASIS_HYPERVISOR
    /// and STASIS_TARGET_STATE set; failing, it aborts the restore with nothing changed.
    #[arg(long, value_name = "CMD")]
    pre_restore: Option<String>,
    /// Run by `sh -c` after a restore put the files in place (start the VM from them in
    /// STASIS_TARGET_STATE: Running, Standby or Stopped), with the same environment.
    #[arg(long, value_name = "CMD")]
    post_restore: Option<String>,
}

/// `[NAME=]PATH` as a file of `role`, its path made absolute (it need not exist yet:
/// a pre-snapshot hook may write it).
fn file(role: Role, spec: &str) -> Result<InstanceFile> {
    let (name, path) = match spec.split_once('=') {
        Some((n, p)) if !n.contains('/') && !n.is_empty() => (Some(n.to_string()), p),
        _ => (None, spec),
    };
    let abs = std::path::absolute(Path::new(path))
        .with_context(|| format!("--{} {spec:?}: not a usable path", role.name()))?;
    let name = match name {
        Some(n) => n,
        None => abs
            .file_name()
            .and_then(|n| n.to_str())
            .map(String::from)
            .with_context(|| format!("--{} {spec:?}: give it a name (NAME=PATH)", role.name()))?,
    };
    let path = abs
        .to_str()
        .with_context(|| format!("--{} {spec:?}: the path is not UTF-8", role.name()))?
        .to_string();
    Ok(InstanceFile { role, name, path })
}

fn print_instance(i: &Instance) {
    println!(
        "instance {} ({}), tenant {}",
        i.vm.name, i.vm.id, i.vm.tenant
    );
    println!("  hypervisor {}", i.hypervisor);
    for f in &i.files {
        println!("  {:<6} {:<20} {}", f.role.name(), f.name, f.path);
    }
    if let Some(h) = &i.pre_snapshot {
        println!("  pre-snapshot  {h}");
    }
    if let Some(h) = &i.post_snapshot {
        println!("  post-snapshot {h}");
    }
    if let Some(h) = &i.pre_restore {
        println!("  pre-restore   {h}");
    }
    if let Some(h) = &i.post_restore {
        println!("  post-restore  {h}");
    }
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let mut repo = ctx.open()?;
    match a.command {
        Command::Add(a) => {
            let a = *a;
            let hypervisor: Hypervisor = a.hypervisor.parse()?;
            let mut files = Vec::new();
            for d in &a.disk {
                files.push(file(Role::Disk, d)?);
            }
            if let Some(m) = &a.memory {
                files.push(file(Role::Memory, m)?);
            }
            for s in &a.state {
                files.push(file(Role::State, s)?);
            }
            let i = repo.catalog_mut().register_instance(&NewInstance {
                vm: a.vm,
                tenant: a.tenant,
                hypervisor,
                files,
                pre_snapshot: a.pre_snapshot,
                post_snapshot: a.post_snapshot,
                pre_restore: a.pre_restore,
                post_restore: a.post_restore,
            })?;
            if ctx.json {
                return print_json(&i);
            }
            print_instance(&i);
        }
        Command::List => {
            let all = repo.catalog().instances()?;
            if ctx.json {
                return print_json(&all);
            }
            println!("{:<24} {:<20} {:<17} FILES", "NAME", "TENANT", "HYPERVISOR");
            for i in &all {
                let files: Vec<&str> = i.files.iter().map(|f| f.name.as_str()).collect();
                println!(
                    "{:<24} {:<20} {:<17} {}",
                    i.vm.name,
                    i.vm.tenant,
                    i.hypervisor.to_string(),
                    files.join(", ")
                );
            }
        }
        Command::Show { vm } => {
            let i = repo
                .catalog()
                .instance(&vm)?
                .with_context(|| format!("no instance {vm:?} (stasis instance add)"))?;
            if ctx.json {
                return print_json(&i);
            }
            print_instance(&i);
        }
        Command::Restore(r) => {
            let files = match (r.copy, repo.running_mount()) {
                (false, Some(m)) => stasis_repo::fork::Files::Mount(m),
                _ => stasis_repo::fork::Files::Copy,
            };
            let who = actor();
            let req = stasis_repo::instance::RestoreRequest {
                target_state: r.target_state.as_deref().map(str::parse).transpose()?,
                target_hypervisor: r
                    .target_hypervisor
                    .as_deref()
                    .map(str::parse::<Hypervisor>)
                    .transpose()?,
                files: &files,
                paths: stasis_repo::create::Paths::Host,
                actor: &who,
            };
            let (snap, done) = repo.restore_instance(&r.vm, &r.snap, &req)?;
            if ctx.json {
                print_json(&done)?;
            } else {
                println!(
                    "restored instance {} to {}/{} ({}): {} on {}",
                    done.instance.vm.name,
                    snap.source_instance_name,
                    snap.name,
                    snap.id,
                    done.state,
                    done.hypervisor
                );
                for p in &done.files {
                    match &p.backing {
                        Some(b) => println!("  {}  {} of {}", p.path.display(), p.how, b.display()),
                        None => println!("  {}  {}", p.path.display(), p.how),
                    }
                }
            }
            if let Some(why) = done.post_restore_error {
                anyhow::bail!("the files are restored, but {why}");
            }
        }
        Command::Remove { vm } => {
            repo.catalog_mut().unregister_instance(&vm)?;
            if !ctx.json {
                println!("removed instance {vm} (its snapshots stay)");
            } else {
                print_json(&serde_json::json!({ "removed": vm }))?;
            }
        }
    }
    Ok(())
}
