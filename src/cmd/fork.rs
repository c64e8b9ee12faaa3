//! `stasis fork`: clone a VM from a snapshot, booting from the mount.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use stasis_catalog::validate_name;
use stasis_repo::fork::Files;

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

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    validate_name(&a.new_vm).context("the new VM's name")?;
    let mut repo = ctx.open()?;
    // Refused before a mount is looked for, so the clash is what the user hears.
    if repo.catalog().vm(&a.new_vm)?.is_some() {
        bail!("VM {} already exists", a.new_vm);
    }
    let files = if a.copy {
        Files::Copy
    } else {
        match a.mount.clone().or_else(|| repo.running_mount()) {
            Some(m) => Files::Mount(m),
            None => bail!(
                "no running `stasis mount` of this repository: start one, pass --mount MOUNTPOINT, or use --copy"
            ),
        }
    };
    let (snap, forked) = repo.fork(&a.snap, &a.new_vm, &a.dir, &files, &actor())?;
    let (vm, out) = (&forked.vm, &forked.files);
    if ctx.json {
        return print_json(&serde_json::json!({ "vm": vm, "snapshot": snap.id, "files": out }));
    }
    println!(
        "forked VM {} from {}/{} ({})",
        vm.name, snap.source_instance_name, snap.name, snap.id
    );
    for p in out {
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
