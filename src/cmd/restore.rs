//! `stasis restore`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use stasis_repo::restore::{RestoreOptions, RestoreProgress};

use crate::output::{bar, human, print_json};
use crate::repo::Context;

/// Write a snapshot's files into a directory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot: an id, VM/NAME, or VM (its current snapshot).
    snap: String,
    /// The directory to write into (created if missing).
    dir: PathBuf,
    /// Replace files that already exist in DIR.
    #[arg(long)]
    force: bool,
    /// fsync each restored file before reporting success (like `sync` after `cp`).
    #[arg(long)]
    sync: bool,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let started = Instant::now();
    let repo = ctx.open()?;
    let pb = bar(0, "restoring");
    let opts = RestoreOptions {
        force: a.force,
        sync: a.sync,
    };
    let (snap, files) = repo.restore(&a.snap, &a.dir, opts, &|p| match p {
        RestoreProgress::Total(n) => pb.set_length(n),
        RestoreProgress::Written(n) => pb.inc(n),
    })?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        let files: Vec<_> = files
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "path": f.path, "size_bytes": f.stats.size, "written_bytes": f.stats.written}))
            .collect();
        return print_json(
            &serde_json::json!({"snapshot": snap.id, "files": files, "seconds": secs}),
        );
    }
    for f in &files {
        println!(
            "{}  {} ({} written, the rest sparse)",
            f.path.display(),
            human(f.stats.size),
            human(f.stats.written)
        );
    }
    println!(
        "restored {}/{} in {secs:.2}s",
        snap.source_instance_name, snap.name
    );
    Ok(())
}
