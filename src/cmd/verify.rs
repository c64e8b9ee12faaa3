//! `stasis verify`.

use anyhow::{Result, bail};
use stasis_store::repair::rebuild_index;
use stasis_store::verify::{Problem, verify_manifest, verify_store};

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
    let (repo, bad_index) = ctx.open_damaged()?;
    let a = Args {
        read_data: a.read_data || a.repair,
        ..a
    };
    let total: u64 = if a.read_data {
        repo.store
            .backend()
            .list("packs/")?
            .iter()
            .map(|m| m.size)
            .sum()
    } else {
        0
    };
    let pb = bar(total, "verifying");
    let report = verify_store(&repo.store, a.read_data, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    let mut report = report;
    for (key, e) in &bad_index {
        report.problems.push(Problem {
            object: key.clone(),
            message: e.to_string(),
        });
    }
    for line in repo.catalog.check_integrity()? {
        report.problems.push(Problem {
            object: "catalog.db".into(),
            message: line,
        });
    }
    let repaired = if a.repair {
        Some(rebuild_index(
            &repo.store,
            &report.bad_blocks,
            &report.damaged_packs,
        )?)
    } else {
        None
    };
    // After a repair, what remains wrong is what the snapshots lost.
    let mut problems: Vec<Problem> = if repaired.is_some() {
        Vec::new()
    } else {
        report.problems.clone()
    };
    let snaps = repo.catalog.list(None)?;
    let mut payloads = 0;
    let actor = crate::repo::actor();
    let mut repo = repo;
    for s in &snaps {
        let before = problems.len();
        for p in &s.payloads {
            payloads += 1;
            let what = format!(
                "{}/{} ({}) {}",
                s.source_instance_name, s.name, s.id, p.name
            );
            problems.extend(verify_manifest(
                &repo.store,
                &p.manifest,
                &what,
                &report.bad_blocks,
            ));
        }
        // The timeline says what was found: a snapshot whose tree or blocks fail is marked
        // `error`; a clean check that read every block marks it verified (and active).
        if let Some(first) = problems.get(before) {
            repo.catalog
                .mark_error(&s.id, &actor, &format!("verify: {}", first.message))?;
        } else if a.read_data && report.problems.is_empty() {
            repo.catalog.mark_verified(
                &s.id,
                &actor,
                "verify --read-data: every block read and checked",
            )?;
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "ok": problems.is_empty(),
            "packs": report.packs,
            "blobs": report.blobs,
            "bytes_read": report.bytes_read,
            "snapshots": snaps.len(),
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
            snaps.len(),
            payloads
        );
        if let Some(r) = &repaired {
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
        for p in &problems {
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
