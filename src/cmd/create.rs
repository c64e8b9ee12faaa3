//! `stasis create`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use stasis_catalog::{
    Hypervisor, Kind, NewPayload, NewSnapshot, PowerState, Snapshot, check_payload_names,
    parse_expiry, parse_tag,
};
use stasis_store::codec::{Algorithm, Compression};
use stasis_store::config::Role;
use stasis_store::ingest::{self, IngestStats};
use stasis_store::source::{data_regions, open_input};

use crate::output::{bar, human, print_json, ratio};
use crate::repo::Context;
use crate::usage::added_over;

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
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
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

/// How to read inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// qcow2 when the file says so, else raw.
    Auto,
    /// The file's bytes as they are.
    Raw,
    /// The disk a qcow2 image shows.
    Qcow2,
}

/// One input: role, name inside the snapshot, path, and whether it is a qcow2 image
/// whose guest-visible disk is stored.
#[derive(Debug)]
struct Input {
    role: Role,
    name: String,
    path: PathBuf,
    qcow2: bool,
}

/// Store the disk a qcow2 overlay shows. When its backing file is the parent's payload
/// in a stasis mount (a fork's overlay), only the clusters it allocated are read and
/// applied over the parent's manifest; otherwise the image is converted whole.
fn store_qcow2(
    w: &mut stasis_store::store::Writer<'_>,
    i: &Input,
    parent: Option<&Snapshot>,
    block_size: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(stasis_store::manifest::Manifest, IngestStats)> {
    let ov = crate::qcow2::Overlay::open(&i.path)?;
    let base = parent.and_then(|p| {
        p.payloads
            .iter()
            .find(|pp| pp.name == i.name && pp.role == i.role)
            .map(|pp| (p, pp))
    });
    let backed_by_parent = match (&ov.backing, base) {
        (Some(b), Some((p, pp))) => {
            b.ends_with(&format!("/snapshots/{}/{}", p.id, pp.name))
                || b.ends_with(&format!(
                    "/vms/{}/{}/{}",
                    p.source_instance_name, p.name, pp.name
                ))
        }
        _ => false,
    };
    if let (true, true, Some((_, pp))) = (backed_by_parent, ov.plain, base) {
        tracing::info!(
            "{}: applying {} allocated bytes over the parent",
            i.path.display(),
            ov.allocated()
        );
        return Ok(ingest::ingest_layer(
            w,
            &ov,
            &ov.regions(),
            ov.virtual_size,
            &pp.manifest,
            progress,
        )?);
    }
    let tmp = std::env::temp_dir().join(format!("stasis-{}-{}.raw", std::process::id(), i.name));
    let result = (|| -> Result<_> {
        crate::qcow2::convert_to_raw(&i.path, &tmp)?;
        let inp = open_input(&tmp)?;
        Ok(ingest::ingest_full(
            w, &inp.file, inp.size, block_size, progress,
        )?)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn parse_input(role: Role, spec: &str, format: Format) -> Result<Input> {
    let (explicit, name, path) = match spec.split_once('=') {
        Some((n, p)) if !n.contains('/') && !n.is_empty() => {
            (true, n.to_string(), PathBuf::from(p))
        }
        _ => {
            let p = PathBuf::from(spec);
            let n = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    anyhow!("cannot take a file name from {spec:?}; give one as NAME=PATH")
                })?
                .to_string();
            (false, n, p)
        }
    };
    if path.as_os_str().is_empty() {
        bail!("--{role} {spec:?} names no file");
    }
    let qcow2 = match format {
        Format::Raw => false,
        Format::Qcow2 => true,
        Format::Auto => crate::qcow2::is_qcow2(&path),
    };
    // A fork's `root.qcow2` commits back as `root`.
    let name = match name.strip_suffix(".qcow2") {
        Some(stem) if qcow2 && !explicit && !stem.is_empty() => stem.to_string(),
        _ => name,
    };
    Ok(Input {
        role,
        name,
        path,
        qcow2,
    })
}

#[derive(serde::Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    ingest: Vec<IngestStats>,
    seconds: f64,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    let started = Instant::now();
    let mut inputs = Vec::new();
    for d in &a.disk {
        inputs.push(parse_input(Role::Disk, d, a.format)?);
    }
    if let Some(m) = &a.memory {
        inputs.push(parse_input(Role::Memory, m, a.format)?);
    }
    for s in &a.state {
        inputs.push(parse_input(Role::State, s, a.format)?);
    }
    if inputs.is_empty() {
        bail!("nothing to store: give at least one --disk, --memory or --state");
    }
    // Metadata is checked before anything is opened or read.
    let kind: Kind = match &a.kind {
        Some(k) => k.parse()?,
        None if a.memory.is_some() => Kind::Standby,
        None => Kind::Stopped,
    };
    let hypervisor: Option<Hypervisor> = a.hypervisor.as_deref().map(str::parse).transpose()?;
    let power_state: Option<PowerState> = a.power_state.as_deref().map(str::parse).transpose()?;
    let expires_at = a.expires.as_deref().map(parse_expiry).transpose()?;
    let mut tags = BTreeMap::new();
    for t in &a.tags {
        let (k, v) = parse_tag(t)?;
        tags.insert(k, v);
    }
    let mut repo = ctx.open()?;
    let config = repo.store.config().clone();
    let compression = match (&a.compression, a.level) {
        (Some(c), l) => Compression::new(c.parse::<Algorithm>()?, l)?,
        (None, Some(l)) => Compression::new(config.compression.algorithm(), Some(l))?,
        (None, None) => config.compression,
    };

    let parent: Option<Snapshot> = match &a.parent {
        Some(spec) => Some(
            repo.catalog
                .resolve(spec)
                .with_context(|| format!("parent {spec}"))?,
        ),
        None => match repo.catalog.vm(&a.vm)?.and_then(|vm| vm.current_id) {
            Some(id) => repo.catalog.get(&id)?,
            None => None,
        },
    };
    if a.diff && parent.is_none() {
        bail!(
            "--diff needs a parent: give --parent SNAP (or create a full snapshot of {} first)",
            a.vm
        );
    }

    let mut new = NewSnapshot {
        vm: a.vm.clone(),
        name: a.name.clone(),
        parent_id: parent.as_ref().map(|p| p.id.clone()),
        created_by: a.created_by.clone().unwrap_or_else(crate::repo::actor),
        description: a.description.clone(),
        compression: compression.into(),
        uncompressed_size_bytes: 0,
        compressed_size_bytes: 0,
        added_bytes: 0,
        make_current: !a.no_current,
        kind,
        source_hypervisor: hypervisor,
        quiesced: a.quiesced,
        power_state,
        datastore: a
            .datastore
            .clone()
            .or_else(|| Some(repo.path.display().to_string())),
        expires_at,
        tags,
        payloads: Vec::new(),
    };
    // Refuse bad names, duplicates and foreign parents before reading anything.
    repo.catalog.check_new(&new)?;
    check_payload_names(inputs.iter().map(|i| i.name.as_str()))?;

    // Open every input first so a missing file fails before any work.
    let mut opened = Vec::new();
    let mut total = 0u64;
    for i in &inputs {
        let inp =
            open_input(&i.path).with_context(|| format!("--{} {}", i.role, i.path.display()))?;
        total += data_regions(&inp.file, inp.size)?
            .iter()
            .map(|r| r.end - r.start)
            .sum::<u64>();
        opened.push(inp);
    }
    let pb = bar(total, "storing");
    let progress = |n: u64| pb.inc(n);

    let mut writer = repo.store.writer(compression)?;
    let mut stats = Vec::new();
    for (i, inp) in inputs.iter().zip(&opened) {
        let (manifest, st) = if a.diff && !i.qcow2 {
            let parent = parent
                .as_ref()
                .ok_or_else(|| anyhow!("--diff needs a parent"))?;
            let pp = parent
                .payloads
                .iter()
                .find(|p| p.name == i.name)
                .ok_or_else(|| {
                    anyhow!(
                        "the parent {} has no payload named {:?} to apply the diff to",
                        parent.id,
                        i.name
                    )
                })?;
            if pp.role != i.role {
                bail!(
                    "{:?} is a {} payload in the parent, not {}",
                    i.name,
                    pp.role,
                    i.role
                );
            }
            ingest::ingest_diff(&mut writer, &inp.file, inp.size, &pp.manifest, &progress)
                .map_err(anyhow::Error::from)
        } else if i.qcow2 {
            store_qcow2(
                &mut writer,
                i,
                parent.as_ref(),
                config.block_sizes.get(i.role),
                &progress,
            )
        } else {
            let bs = config.block_sizes.get(i.role);
            ingest::ingest_full(&mut writer, &inp.file, inp.size, bs, &progress)
                .map_err(anyhow::Error::from)
        }
        .with_context(|| format!("storing {}", i.path.display()))?;
        new.payloads.push(NewPayload {
            name: i.name.clone(),
            role: i.role,
            allocated: st.allocated,
            data_bytes: st.data_bytes,
            manifest,
        });
        stats.push(st);
    }
    // Held until the catalog records the snapshot: gc waits for this session.
    let committed = writer.commit().context("writing the snapshot's blocks")?;
    pb.finish_and_clear();

    // What this snapshot added over its parent (blocks and tree nodes).
    let sizes = added_over(
        &repo.store,
        new.payloads.iter().map(|p| &p.manifest),
        parent.as_ref(),
    )?;
    new.added_bytes = sizes.added_bytes;
    new.compressed_size_bytes = sizes.compressed_size_bytes;
    new.uncompressed_size_bytes = sizes.uncompressed_size_bytes;
    let snap = repo.catalog.create(&new)?;
    drop(committed);
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        return print_json(&Created {
            snapshot: &snap,
            ingest: stats,
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
    Ok(())
}
