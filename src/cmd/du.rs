//! `stasis du`.

use std::collections::HashSet;

use anyhow::Result;
use serde::Serialize;
use stasis_store::pack::BlobKind;
use stasis_store::verify::new_stored_bytes;

use crate::output::{human, print_json, ratio};
use crate::repo::Context;

/// Space used.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One snapshot (id, VM/NAME or VM) instead of the whole repository.
    snap: Option<String>,
}

#[derive(Debug, Serialize)]
struct SnapUsage {
    id: String,
    vm: String,
    name: String,
    parent_id: Option<String>,
    logical_bytes: u64,
    data_bytes: u64,
    added_bytes: u64,
}

#[derive(Debug, Serialize)]
struct RepoUsage {
    snapshots: usize,
    logical_bytes: u64,
    data_bytes: u64,
    unique_bytes: u64,
    stored_data_bytes: u64,
    stored_tree_bytes: u64,
    pack_bytes: u64,
    index_bytes: u64,
    repository_bytes: u64,
    dedup_ratio: f64,
    compression_ratio: f64,
    per_snapshot: Vec<SnapUsage>,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let repo = ctx.open()?;
    if let Some(spec) = a.snap {
        let s = repo.catalog.resolve(&spec)?;
        let mut seen = HashSet::default();
        let (mut stored, mut raw) = (0, 0);
        for p in &s.payloads {
            let (st, r) = new_stored_bytes(&repo.store, &p.manifest, &mut seen)?;
            stored += st;
            raw += r;
        }
        let data: u64 = s.payloads.iter().map(|p| p.data_bytes).sum();
        if ctx.json {
            return print_json(&serde_json::json!({
                "id": s.id, "logical_bytes": s.size_bytes, "data_bytes": data,
                "referenced_unique_bytes": raw, "referenced_stored_bytes": stored, "added_bytes": s.added_bytes,
            }));
        }
        println!("{}/{} ({})", s.source_instance_name, s.name, s.id);
        println!("  logical            {:>12}", human(s.size_bytes));
        println!("  data (non-zero)    {:>12}", human(data));
        println!("  referenced unique  {:>12}", human(raw));
        println!("  referenced stored  {:>12}", human(stored));
        println!("  added over parent  {:>12}", human(s.added_bytes));
        return Ok(());
    }
    let snaps = repo.catalog.list(None)?;
    let (mut unique, mut stored_data, mut stored_tree) = (0u64, 0u64, 0u64);
    let idx = repo.store.index();
    for (_, loc) in idx.iter() {
        match loc.kind {
            BlobKind::Data => {
                unique += u64::from(loc.raw_len);
                stored_data += idx.stored_share(loc);
            }
            BlobKind::Tree => stored_tree += idx.stored_share(loc),
        }
    }
    drop(idx);
    let backend = repo.store.backend();
    let pack_bytes: u64 = backend.list("packs/")?.iter().map(|m| m.size).sum();
    let index_bytes: u64 = backend.list("index/")?.iter().map(|m| m.size).sum();
    let catalog_bytes: u64 = ["catalog.db", "catalog.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(repo.path.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let logical: u64 = snaps.iter().map(|s| s.size_bytes).sum();
    let data: u64 = snaps
        .iter()
        .flat_map(|s| &s.payloads)
        .map(|p| p.data_bytes)
        .sum();
    let u = RepoUsage {
        snapshots: snaps.len(),
        logical_bytes: logical,
        data_bytes: data,
        unique_bytes: unique,
        stored_data_bytes: stored_data,
        stored_tree_bytes: stored_tree,
        pack_bytes,
        index_bytes,
        repository_bytes: pack_bytes + index_bytes + catalog_bytes,
        dedup_ratio: ratio(data, unique),
        compression_ratio: ratio(unique, stored_data),
        per_snapshot: snaps
            .iter()
            .map(|s| SnapUsage {
                id: s.id.clone(),
                vm: s.source_instance_name.clone(),
                name: s.name.clone(),
                parent_id: s.parent_id.clone(),
                logical_bytes: s.size_bytes,
                data_bytes: s.payloads.iter().map(|p| p.data_bytes).sum(),
                added_bytes: s.added_bytes,
            })
            .collect(),
    };
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
    Ok(())
}
