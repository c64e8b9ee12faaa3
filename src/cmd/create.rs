//! `stasis create`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use stasis_catalog::parse_tag;
use stasis_repo::create::{self, CreateSpec, Format, InputSpec, Paths, Progress};
use stasis_repo::instance;

use crate::output::{bar, human, print_json, ratio};
use crate::repo::Context;

/// Store a snapshot of a VM's files.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The VM (created in the catalog on first use).
    vm: String,
    /// The snapshot's name, unique within the VM.
    name: String,
    /// A disk image; the file name inside the snapshot defaults to the base name.
    #[arg(long, value_name = "[NAME=]PATH")]
    disk: Vec<String>,
    /// The guest memory file.
    #[arg(long, value_name = "[NAME=]PATH")]
    memory: Option<String>,
    /// A state file (vmstate, config.json, state.json, memory-ranges, ...).
    #[arg(long, value_name = "[NAME=]PATH")]
    state: Vec<String>,
    /// The snapshot this one branches from (default: the VM's current snapshot).
    #[arg(long, value_name = "SNAP")]
    parent: Option<String>,
    /// Inputs are sparse diff layers over the parent's payloads of the same name:
    /// holes keep the parent's bytes, written bytes (zeros too) replace them.
    #[arg(long)]
    diff: bool,
    /// Compression for this snapshot: zstd, lz4 or none (default: the repository's).
    #[arg(long)]
    compression: Option<String>,
    /// Compression level.
    #[arg(long)]
    level: Option<i32>,
    /// Free text.
    #[arg(long)]
    description: Option<String>,
    /// Who made it (default: $USER).
    #[arg(long)]
    created_by: Option<String>,
    /// Do not make the new snapshot the VM's current one.
    #[arg(long)]
    no_current: bool,
    /// Input format: auto (detect qcow2, else raw), raw (store the file as it is) or
    /// qcow2 (store the disk the image shows).
    #[arg(long, default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(Format::NAMES))]
    format: String,
    /// Standby (memory and devices captured) or Stopped (disks only); any case.
    /// Default: Standby when a memory file is given, else Stopped.
    #[arg(long)]
    kind: Option<String>,
    /// The hypervisor that wrote it: cloud-hypervisor, firecracker, qemu, qemu-microvm, vz.
    #[arg(long)]
    hypervisor: Option<String>,
    /// The guest's filesystems were quiesced.
    #[arg(long)]
    quiesced: bool,
    /// powered_on, powered_off or suspended.
    #[arg(long)]
    power_state: Option<String>,
    /// Where it is stored (free text; default: the repository path).
    #[arg(long)]
    datastore: Option<String>,
    /// Expiry: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS (UTC) or RFC 3339 (a past one expires at once).
    #[arg(long, value_name = "DATE")]
    expires: Option<String>,
    /// A tag, KEY=VALUE; repeatable (at most 50).
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
}

/// `[NAME=]PATH` of `--ROLE`: an explicit name, or the file's base name.
fn input(role: &str, spec: &str, format: &str) -> InputSpec {
    let (name, path) = match spec.split_once('=') {
        Some((n, p)) if !n.contains('/') && !n.is_empty() => (Some(n.to_string()), p),
        _ => (None, spec),
    };
    InputSpec {
        label: format!("--{role} {spec:?}"),
        role: role.into(),
        name,
        path: PathBuf::from(path),
        format: Some(format.into()),
    }
}

#[derive(serde::Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    created: &'a create::Created,
    seconds: f64,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let started = Instant::now();
    let mut inputs = Vec::new();
    for d in &a.disk {
        inputs.push(input("disk", d, &a.format));
    }
    if let Some(m) = &a.memory {
        inputs.push(input("memory", m, &a.format));
    }
    for s in &a.state {
        inputs.push(input("state", s, &a.format));
    }
    let mut tags = BTreeMap::new();
    for t in &a.tags {
        let (k, v) = parse_tag(t)?;
        tags.insert(k, v);
    }
    let mut repo = ctx.open()?;
    let spec = CreateSpec {
        vm: a.vm.clone(),
        name: Some(a.name.clone()),
        kind: a.kind.clone(),
        hypervisor: a.hypervisor.clone(),
        power_state: a.power_state.clone(),
        quiesced: a.quiesced,
        description: a.description.clone(),
        created_by: a.created_by.clone().unwrap_or_else(crate::repo::actor),
        make_current: !a.no_current,
        datastore: a
            .datastore
            .clone()
            .or_else(|| Some(repo.config().dir.display().to_string())),
        expires: a.expires.clone(),
        tags,
        compression: a.compression.clone(),
        level: a.level,
        parent: a.parent.clone(),
        diff: a.diff,
        tenant: None,
        inputs,
    };
    let pb = bar(0, "storing");
    let progress = |p: Progress| match p {
        Progress::Total(n) => pb.set_length(n),
        Progress::Advanced(n) => pb.inc(n),
    };
    let created = if spec.inputs.is_empty() {
        // No files named: the VM's registered ones, with its hooks.
        let Some(instance) = repo.catalog().instance(&a.vm)? else {
            bail!(
                "nothing to store: give at least one --disk, --memory or --state, or \
                 register {} (stasis instance add) to snapshot its files by name",
                a.vm
            );
        };
        if a.diff {
            bail!("--diff takes the layers as files: give them with --disk/--memory/--state");
        }
        let (store, catalog) = repo.parts();
        instance::snapshot(store, catalog, &instance, spec, Paths::Host, &progress)?
    } else {
        let req = spec.into_request(repo.store().config(), Paths::Host)?;
        if a.diff && create::parent_of(repo.catalog(), &req)?.is_none() {
            bail!(
                "--diff needs a parent: give --parent SNAP (or create a full snapshot of {} first)",
                a.vm
            );
        }
        repo.create(req, &progress)?
    };
    pb.finish_and_clear();
    let snap = &created.snapshot;
    let stats = &created.ingest;
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        return print_json(&Created {
            created: &created,
            seconds: secs,
        });
    }
    println!("{}", snap.id);
    let data: u64 = stats.iter().map(|s| s.data_bytes).sum();
    println!(
        "created {}/{}: {} payload(s), {} logical, {} data, added {} stored ({:.2}x compression) in {:.2}s",
        snap.source_instance_name,
        snap.name,
        snap.payloads.len(),
        human(snap.size_bytes),
        human(data),
        human(snap.added_bytes),
        ratio(snap.uncompressed_size_bytes, snap.compressed_size_bytes),
        secs
    );
    let new: u64 = stats.iter().map(|s| s.new_blocks).sum();
    let deltas: u64 = stats.iter().map(|s| s.delta_blocks).sum();
    if deltas > 0 {
        println!("{deltas} of {new} new blocks stored as deltas on the parent's blocks");
    }
    let xored: u64 = stats.iter().map(|s| s.xor_blocks).sum();
    if xored > 0 {
        println!("{xored} of {new} new blocks stored XORed with similar stored blocks");
    }
    Ok(())
}
