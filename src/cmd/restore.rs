//! `stasis restore`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use stasis_store::{PayloadReader, RestoreStats};

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
    let snap = repo.catalog().resolve(&a.snap)?;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    // Refuse before writing anything if a file would be replaced.
    if !a.force {
        for p in &snap.payloads {
            let target = a.dir.join(&p.name);
            if target.exists() {
                bail!("{} exists; remove it or pass --force", target.display());
            }
        }
    }
    let total: u64 = snap.payloads.iter().map(|p| p.data_bytes).sum();
    let pb = bar(total, "restoring");
    let mut stats: Vec<(String, RestoreStats)> = Vec::new();
    for p in &snap.payloads {
        let target = a.dir.join(&p.name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        let st = PayloadReader::new(repo.store(), p.manifest)
            .and_then(|r| r.restore(&file, &|n| pb.inc(n)))
            .with_context(|| format!("restoring {} of {}", p.name, snap.id))?;
        if a.sync {
            file.sync_all()
                .with_context(|| format!("syncing {}", target.display()))?;
        }
        stats.push((p.name.clone(), st));
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        let files: Vec<_> = stats
            .iter()
            .map(|(n, s)| serde_json::json!({"name": n, "path": a.dir.join(n), "size_bytes": s.size, "written_bytes": s.written}))
            .collect();
        return print_json(
            &serde_json::json!({"snapshot": snap.id, "files": files, "seconds": secs}),
        );
    }
    for (n, s) in &stats {
        println!(
            "{}  {} ({} written, the rest sparse)",
            a.dir.join(n).display(),
            human(s.size),
            human(s.written)
        );
    }
    println!(
        "restored {}/{} in {secs:.2}s",
        snap.source_instance_name, snap.name
    );
    Ok(())
}
