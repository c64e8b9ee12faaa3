//! `stasis list` and `stasis show`.

use anyhow::Result;

use crate::output::{human, print_json};
use crate::repo::Context;

/// List snapshots.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
}

/// Show one snapshot.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// An id, VM/NAME, or VM (its current snapshot).
    snap: String,
}

/// Run `list`.
pub fn list(ctx: &Context, a: ListArgs) -> Result<()> {
    let repo = ctx.open()?;
    let snaps = repo.catalog.list(a.vm.as_deref())?;
    if ctx.json {
        return print_json(&snaps);
    }
    println!(
        "{:<24} {:<28} {:<24} {:<25} {:>10} {:>10}",
        "ID", "VM/NAME", "PARENT", "CREATED", "SIZE", "ADDED"
    );
    for s in &snaps {
        println!(
            "{:<24} {:<28} {:<24} {:<25} {:>10} {:>10}",
            s.id,
            format!(
                "{}/{}{}",
                s.source_instance_name,
                s.name,
                if s.is_current { " *" } else { "" }
            ),
            s.parent_id.as_deref().unwrap_or("-"),
            s.created_at.get(..19).unwrap_or(&s.created_at),
            human(s.size_bytes),
            human(s.added_bytes)
        );
    }
    Ok(())
}

/// Run `show`.
pub fn show(ctx: &Context, a: ShowArgs) -> Result<()> {
    let repo = ctx.open()?;
    let s = repo.catalog.resolve(&a.snap)?;
    if ctx.json {
        return print_json(&s);
    }
    println!("id          {}", s.id);
    println!("name        {}/{}", s.source_instance_name, s.name);
    println!("parent      {}", s.parent_id.as_deref().unwrap_or("-"));
    println!("created     {} by {}", s.created_at, s.created_by);
    println!(
        "status      {}{}",
        s.status,
        if s.is_current { " (current)" } else { "" }
    );
    println!(
        "size        {} logical, {} added",
        human(s.size_bytes),
        human(s.added_bytes)
    );
    for p in &s.payloads {
        println!(
            "payload     {:<20} {:<7} {:>10} logical {:>10} data  blocks of {}",
            p.name,
            p.role,
            human(p.manifest.size),
            human(p.data_bytes),
            human(p.manifest.block_size.into())
        );
    }
    Ok(())
}
