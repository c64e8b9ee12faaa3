//! `stasis list`, `stasis show` and `stasis log`.

use anyhow::Result;
use stasis_catalog::{ListFilter, Snapshot, parse_tag};

use crate::output::{human, print_json};
use crate::repo::Context;

/// List snapshots.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
    /// Only snapshots with this tag (K=V); repeatable, all must match.
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// Only this status: active, consolidating, deleted, error.
    #[arg(long)]
    status: Option<String>,
    /// Only this kind: Standby or Stopped.
    #[arg(long)]
    kind: Option<String>,
    /// Only this hypervisor.
    #[arg(long)]
    hypervisor: Option<String>,
    /// Only expired snapshots.
    #[arg(long)]
    expired: bool,
    /// Include deleted snapshots (kept until gc).
    #[arg(long)]
    all: bool,
    /// Order: created_at (default), name, size_bytes, added_bytes (largest first: what
    /// to delete for space), expires_at.
    #[arg(long, value_name = "FIELD")]
    sort: Option<String>,
    /// At most N snapshots.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Only snapshots created after this one (its id): the next page after a --limit.
    #[arg(long, value_name = "ID")]
    after: Option<String>,
}

/// Show one snapshot.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// An id, VM/NAME, or VM (its current snapshot).
    snap: String,
}

/// Build the catalog filter from the flags (all checked before anything is read).
pub fn filter(a: &ListArgs) -> Result<ListFilter> {
    Ok(ListFilter {
        vm: a.vm.clone(),
        tenant: None,
        name: None,
        tags: a
            .tags
            .iter()
            .map(|t| parse_tag(t))
            .collect::<Result<_, _>>()?,
        status: a.status.as_deref().map(str::parse).transpose()?,
        kind: a.kind.as_deref().map(str::parse).transpose()?,
        hypervisor: a.hypervisor.as_deref().map(str::parse).transpose()?,
        expired: a.expired,
        parent_id: None,
        all: a.all,
        sort: a
            .sort
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default(),
        limit: a.limit,
        after: a.after.clone(),
    })
}

/// Print snapshots as a table.
pub fn table(snaps: &[Snapshot]) {
    println!(
        "{:<24} {:<28} {:<8} {:<13} {:<20} {:>10} {:>10}",
        "ID", "VM/NAME", "KIND", "STATUS", "CREATED", "SIZE", "ADDED"
    );
    for s in snaps {
        println!(
            "{:<24} {:<28} {:<8} {:<13} {:<20} {:>10} {:>10}",
            s.id,
            format!(
                "{}/{}{}",
                s.source_instance_name,
                s.name,
                if s.is_current { " *" } else { "" }
            ),
            s.kind.as_str(),
            s.status.to_string(),
            s.created_at
                .get(..19)
                .unwrap_or(&s.created_at)
                .replace('T', " "),
            human(s.size_bytes),
            human(s.added_bytes)
        );
    }
}

/// Run `list`.
pub fn list(ctx: &Context, a: ListArgs) -> Result<()> {
    let f = filter(&a)?;
    let repo = ctx.open()?;
    let snaps = repo.catalog().list_filtered(&f)?;
    if ctx.json {
        return print_json(&snaps);
    }
    table(&snaps);
    Ok(())
}

/// Run `show`.
pub fn show(ctx: &Context, a: ShowArgs) -> Result<()> {
    let repo = ctx.open()?;
    let s = repo.catalog().resolve(&a.snap)?;
    if ctx.json {
        return print_json(&s);
    }
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    println!("id                {}", s.id);
    println!(
        "name              {}/{} (VM {})",
        s.source_instance_name, s.name, s.source_instance_id
    );
    println!(
        "kind              {}{}",
        s.kind,
        if s.includes_memory {
            ", includes memory"
        } else {
            ""
        }
    );
    println!(
        "status            {}{}",
        s.status,
        if s.is_current { " (current)" } else { "" }
    );
    println!("parent            {}", opt(s.parent_id.clone()));
    println!("created           {} by {}", s.created_at, s.created_by);
    println!(
        "hypervisor        {}",
        opt(s.source_hypervisor.map(|h| h.to_string()))
    );
    println!(
        "power state       {}{}",
        opt(s.power_state.map(|p| p.to_string())),
        if s.quiesced { ", quiesced" } else { "" }
    );
    println!("datastore         {}", opt(s.datastore.clone()));
    println!("expires           {}", opt(s.expires_at.clone()));
    println!("description       {}", opt(s.description.clone()));
    println!(
        "compression       {} ({})",
        match (s.compression.algorithm, s.compression.level) {
            (Some(a), Some(l)) => format!("{a}-{l}"),
            _ => "none".into(),
        },
        s.compression_state
    );
    println!(
        "size              {} logical; added {} stored ({} uncompressed) over its parent",
        human(s.size_bytes),
        human(s.added_bytes),
        human(s.uncompressed_size_bytes)
    );
    for (k, v) in &s.tags {
        println!("tag               {k}={v}");
    }
    for p in &s.payloads {
        println!(
            "payload           {:<20} {:<7} {:>10} logical {:>10} data, {} blocks",
            p.name,
            p.role,
            human(p.manifest.size),
            human(p.data_bytes),
            human(p.manifest.block_size.into())
        );
    }
    Ok(())
}

/// Show a snapshot's timeline.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// An id, VM/NAME, or VM.
    snap: String,
}

/// Run `log`.
pub fn log(ctx: &Context, a: LogArgs) -> Result<()> {
    let repo = ctx.open()?;
    let s = repo.catalog().resolve(&a.snap)?;
    let events = repo.catalog().events(&s.id)?;
    if ctx.json {
        return print_json(&events);
    }
    println!("{}/{} ({})", s.source_instance_name, s.name, s.id);
    for e in &events {
        println!("{}  {:<15} {:<12} {}", e.at, e.action, e.actor, e.detail);
    }
    Ok(())
}
