//! `stasis du`.

use anyhow::Result;

use crate::output::{human, print_json};
use crate::repo::Context;

/// Space used.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One snapshot (id, VM/NAME or VM) instead of the whole repository.
    snap: Option<String>,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let repo = ctx.open()?;
    if let Some(spec) = a.snap {
        let u = repo.snapshot_usage(&spec)?;
        if ctx.json {
            return print_json(&u);
        }
        let s = repo
            .catalog()
            .get(&u.id)?
            .ok_or_else(|| anyhow::anyhow!("snapshot {} is gone", u.id))?;
        println!("{}/{} ({})", s.source_instance_name, s.name, s.id);
        println!("  logical            {:>12}", human(u.logical_bytes));
        println!("  data (non-zero)    {:>12}", human(u.data_bytes));
        println!(
            "  referenced unique  {:>12}",
            human(u.referenced_unique_bytes)
        );
        println!(
            "  referenced stored  {:>12}",
            human(u.referenced_stored_bytes)
        );
        println!("  added over parent  {:>12}", human(u.added_bytes));
        return Ok(());
    }
    let u = repo.usage()?;
    if ctx.json {
        return print_json(&u);
    }
    println!(
        "{:<24} {:<20} {:>12} {:>12} {:>12}",
        "ID", "VM/NAME", "LOGICAL", "DATA", "ADDED"
    );
    for s in &u.per_snapshot {
        println!(
            "{:<24} {:<20} {:>12} {:>12} {:>12}",
            s.id,
            format!("{}/{}", s.vm, s.name),
            human(s.logical_bytes),
            human(s.data_bytes),
            human(s.added_bytes)
        );
    }
    println!();
    println!("snapshots          {}", u.snapshots);
    println!("logical            {}", human(u.logical_bytes));
    println!("data (non-zero)    {}", human(u.data_bytes));
    println!(
        "unique after dedup {}  (dedup {:.2}x)",
        human(u.unique_bytes),
        u.dedup_ratio
    );
    println!(
        "stored blocks      {}  (compression {:.2}x)",
        human(u.stored_data_bytes),
        u.compression_ratio
    );
    println!("stored tree nodes  {}", human(u.stored_tree_bytes));
    println!(
        "repository         {}  (packs {}, index {})",
        human(u.repository_bytes),
        human(u.pack_bytes),
        human(u.index_bytes)
    );
    if let Some(c) = &u.cache {
        super::cache::print(c);
    }
    Ok(())
}
