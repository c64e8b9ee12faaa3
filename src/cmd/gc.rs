//! `stasis gc`.

use anyhow::Result;
use stasis_store::{GcOptions, Phase};

use crate::output::{human, print_json};
use crate::repo::Context;

/// Remove blocks no snapshot uses and repack mostly-garbage packs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Say what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Repack packs whose live share of bytes is below this percentage.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
    repack_below: u8,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let repo = ctx.open()?;
    let opts = GcOptions {
        dry_run: a.dry_run,
        repack_below: f64::from(a.repack_below) / 100.0,
    };
    let quiet = ctx.json;
    let progress = |p: Phase| {
        if let Phase::Wait(n) = p
            && !quiet
        {
            eprintln!("waiting for {n} running write session(s) to finish");
        }
    };
    let report = repo.gc(&opts, &progress)?;
    if ctx.json {
        return print_json(&report);
    }
    let verb = if a.dry_run { "would free" } else { "freed" };
    println!(
        "{} packs ({}) before; {} live blocks ({} stored) in {} payloads",
        report.packs_before,
        human(report.bytes_before),
        report.live_blobs,
        human(report.live_bytes),
        report.roots
    );
    println!(
        "{verb} {}: {} unused blocks, {} packs deleted, {} repacked into {}, {} orphan packs",
        human(report.bytes_freed),
        report.dead_blobs,
        report.packs_deleted,
        report.packs_repacked,
        report.packs_written,
        report.orphans_deleted
    );
    if report.dead_blobs_kept > 0 {
        println!(
            "{} unused blocks stay in packs that are still at least {}% live",
            report.dead_blobs_kept, a.repack_below
        );
    }
    if report.temporaries_removed > 0 {
        println!(
            "removed {} temporary files of writers that crashed",
            report.temporaries_removed
        );
    }
    for k in &report.kept {
        println!("kept {k}");
    }
    Ok(())
}
