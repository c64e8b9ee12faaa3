//! `stasis tree`, `revert`, `delete` and `tag`: the shape of the snapshot tree.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::Serialize;
use stasis_catalog::{ListFilter, Snapshot, parse_tag};

use crate::output::{human, print_json};
use crate::repo::{Context, actor};

/// Draw the snapshot tree.
#[derive(Debug, clap::Args)]
pub struct TreeArgs {
    /// Only this VM.
    vm: Option<String>,
}

#[derive(Serialize)]
struct Node<'a> {
    depth: usize,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
}

/// Run `tree`. Only branch points indent, so a chain of any length stays readable; the
/// walk uses an explicit stack (no recursion limit).
pub fn tree(ctx: &Context, a: TreeArgs) -> Result<()> {
    let repo = ctx.open()?;
    let vms = match &a.vm {
        Some(v) => match repo.catalog().vm(v)? {
            Some(vm) => vec![vm],
            None => bail!("no VM named {v:?}"),
        },
        None => repo.catalog().vms()?,
    };
    let mut json: Vec<Node<'_>> = Vec::new();
    let mut all: Vec<Vec<Snapshot>> = Vec::new();
    for vm in &vms {
        all.push(repo.catalog().list_filtered(&ListFilter {
            vm: Some(vm.id.clone()),
            ..ListFilter::default()
        })?);
    }
    for (vm, snaps) in vms.iter().zip(&all) {
        let by_id: HashMap<&str, &Snapshot> = snaps.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut kids: HashMap<&str, Vec<&Snapshot>> = HashMap::new();
        let mut roots = Vec::new();
        for s in snaps {
            match s.parent_id.as_deref().filter(|p| by_id.contains_key(p)) {
                Some(p) => kids.entry(p).or_default().push(s),
                None => roots.push(s),
            }
        }
        if !ctx.json {
            println!(
                "VM {}{}",
                vm.name,
                vm.forked_from
                    .as_ref()
                    .map(|f| format!(" (forked from {f})"))
                    .unwrap_or_default()
            );
        }
        // (snapshot, prefix of its own line, prefix of its children's lines, depth)
        let mut stack: Vec<(&Snapshot, String, String, usize)> = Vec::new();
        for (i, r) in roots.iter().enumerate().rev() {
            let (own, next) = if roots.len() == 1 {
                (String::new(), String::new())
            } else if i + 1 == roots.len() {
                ("└─ ".to_string(), "   ".to_string())
            } else {
                ("├─ ".to_string(), "│  ".to_string())
            };
            stack.push((r, own, next, 0));
        }
        while let Some((s, own, next, depth)) = stack.pop() {
            if ctx.json {
                json.push(Node { depth, snapshot: s });
            } else {
                let label = format!("{own}{}{}", s.name, if s.is_current { " *" } else { "" });
                println!(
                    "  {label:<40} {:>10} {:>10}  {:<13} {}",
                    human(s.size_bytes),
                    format!("+{}", human(s.added_bytes)),
                    s.status.to_string(),
                    s.created_at
                        .get(..19)
                        .unwrap_or(&s.created_at)
                        .replace('T', " ")
                );
            }
            let children = kids
                .get(s.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (i, c) in children.iter().enumerate().rev() {
                let entry = if children.len() == 1 {
                    (next.clone(), next.clone())
                } else if i + 1 == children.len() {
                    (format!("{next}└─ "), format!("{next}   "))
                } else {
                    (format!("{next}├─ "), format!("{next}│  "))
                };
                stack.push((c, entry.0, entry.1, depth + 1));
            }
        }
    }
    if ctx.json {
        return print_json(&json);
    }
    Ok(())
}

/// Make a snapshot its VM's current one.
#[derive(Debug, clap::Args)]
pub struct RevertArgs {
    /// An id or VM/NAME.
    snap: String,
}

/// Run `revert`.
pub fn revert(ctx: &Context, a: RevertArgs) -> Result<()> {
    let mut repo = ctx.open()?;
    let s = repo.catalog_mut().revert(&a.snap, &actor())?;
    if ctx.json {
        return print_json(&s);
    }
    println!(
        "{}/{} ({}) is now current; the next create branches from it",
        s.source_instance_name, s.name, s.id
    );
    Ok(())
}

/// Delete snapshots.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// An id or VM/NAME.
    #[arg(required_unless_present = "expired")]
    snap: Option<String>,
    /// Delete its whole subtree.
    #[arg(long)]
    recursive: bool,
    /// Delete every expired snapshot that has no children.
    #[arg(long, conflicts_with_all = ["snap", "recursive"])]
    expired: bool,
}

/// Run `delete`.
pub fn delete(ctx: &Context, a: DeleteArgs) -> Result<()> {
    let mut repo = ctx.open()?;
    let targets: Vec<String> = if a.expired {
        repo.catalog()
            .expired_leaves()?
            .into_iter()
            .map(|s| s.id)
            .collect()
    } else {
        a.snap.into_iter().collect()
    };
    let mut deleted = Vec::new();
    for t in &targets {
        let gone = repo.delete(t, a.recursive, &actor())?;
        deleted.extend(gone);
    }
    if ctx.json {
        return print_json(&serde_json::json!({ "deleted": deleted }));
    }
    for id in &deleted {
        println!("deleted {id}");
    }
    if deleted.is_empty() {
        println!("nothing to delete");
    } else {
        println!(
            "(blocks are freed by `stasis gc`; deleted snapshots stay listable with `list --all`)"
        );
    }
    Ok(())
}

/// Set or remove tags.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// An id, VM/NAME or VM.
    snap: String,
    /// Tags to set, K=V.
    #[arg(value_name = "K=V")]
    set: Vec<String>,
    /// A tag key to remove; repeatable.
    #[arg(long, value_name = "K")]
    remove: Vec<String>,
}

/// Run `tag`.
pub fn tag(ctx: &Context, a: TagArgs) -> Result<()> {
    let set = a
        .set
        .iter()
        .map(|t| parse_tag(t))
        .collect::<Result<Vec<_>, _>>()?;
    if set.is_empty() && a.remove.is_empty() {
        bail!("give tags to set (K=V) or --remove K");
    }
    let mut repo = ctx.open()?;
    let s = repo.catalog_mut().tag(&a.snap, &set, &a.remove, &actor())?;
    if ctx.json {
        return print_json(&s);
    }
    println!(
        "{}/{}: {}",
        s.source_instance_name,
        s.name,
        s.tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
