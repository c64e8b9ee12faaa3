//! `stasis verify`.

use anyhow::{Result, bail};
use stasis_repo::verify::{VerifyOptions, VerifyProgress, verify};

use crate::output::{bar, human, print_json};
use crate::repo::Context;

/// Check the repository.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also read every pack and check every block against its id.
    #[arg(long)]
    read_data: bool,
    /// Rebuild the index from the packs (implies --read-data; corrupt blocks are left
    /// out so new snapshots store them afresh), then list what each snapshot lost.
    #[arg(long)]
    repair: bool,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let (mut repo, bad_index) = ctx.open_damaged()?;
    let a = Args {
        read_data: a.read_data || a.repair,
        ..a
    };
    let pb = bar(0, "verifying");
    let opts = VerifyOptions {
        read_data: a.read_data,
        repair: a.repair,
    };
    let progress = |p: VerifyProgress| match p {
        VerifyProgress::Total(n) => pb.set_length(n),
        VerifyProgress::Read(n) => pb.inc(n),
    };
    let v = verify(
        &mut repo,
        &bad_index,
        opts,
        &crate::repo::actor(),
        &progress,
    )?;
    pb.finish_and_clear();
    let (report, repaired, problems) = (&v.store, &v.repair, &v.problems);
    let (snaps, payloads) = (v.snapshots, v.payloads);
    if ctx.json {
        print_json(&serde_json::json!({
            "ok": problems.is_empty(),
            "packs": report.packs,
            "blobs": report.blobs,
            "bytes_read": report.bytes_read,
            "snapshots": snaps,
            "payloads": payloads,
            "unindexed_packs": report.unindexed_packs,
            "damage_found": if repaired.is_some() { report.problems.clone() } else { Vec::new() },
            "repair": repaired,
            "problems": problems,
        }))?;
    } else {
        println!(
            "checked {} packs ({} blobs{}), {} snapshots, {} payloads",
            report.packs,
            report.blobs,
            if a.read_data {
                format!(", {} read and hashed", human(report.bytes_read))
            } else {
                String::new()
            },
            snaps,
            payloads
        );
        if let Some(r) = repaired {
            for p in &report.problems {
                println!("DAMAGE {}: {}", p.object, p.message);
            }
            println!(
                "repaired: index rebuilt from {} packs ({} blocks; {} corrupt blocks left out, {} unreadable packs, {} damaged packs rewritten); {} old index files replaced",
                r.packs,
                r.blobs,
                r.dropped_blobs,
                r.unreadable_packs.len(),
                r.packs_rewritten,
                r.index_files_replaced
            );
            for u in &r.unreadable_packs {
                println!("unreadable pack {u}");
            }
        } else if !report.unindexed_packs.is_empty() {
            println!(
                "{} pack(s) not in any index (left by an interrupted write; gc removes them)",
                report.unindexed_packs.len()
            );
        }
        for p in problems {
            println!("PROBLEM {}: {}", p.object, p.message);
        }
    }
    if !problems.is_empty() {
        if a.repair {
            bail!(
                "{} problem(s) remain: the snapshots above lost blocks; recreate them from their sources to store those blocks again",
                problems.len()
            );
        }
        bail!("verify found {} problem(s)", problems.len());
    }
    if !ctx.json {
        println!("no problems found");
    }
    Ok(())
}
