//! Ingest a snapshot from files: check everything, store the blocks and manifests
//! (durable once the writer commits), then record the catalog row, which is the point
//! at which the snapshot exists. A failure anywhere before that row leaves no snapshot,
//! only unreferenced packs for gc.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;
use stasis_catalog::{Catalog, NewPayload, NewSnapshot, Snapshot, check_payload_names};
use stasis_store::codec::Compression;
use stasis_store::config::Role;
use stasis_store::ingest::{self, IngestStats};
use stasis_store::manifest::Manifest;
use stasis_store::source::{data_regions, open_input};
use stasis_store::store::{Store, Writer};

use crate::error::{Error, Result};
use crate::usage::added_over;

/// How to read an input file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// qcow2 when the file says so, else raw.
    #[default]
    Auto,
    /// The file's bytes as they are.
    Raw,
    /// The disk a qcow2 image shows.
    Qcow2,
}

/// One input file of a new snapshot, open: it is read through this descriptor only,
/// never opened again by name.
#[derive(Debug)]
pub struct Input {
    /// Disk, memory or state.
    pub role: Role,
    /// The file's name inside the snapshot.
    pub name: String,
    /// Where it was opened from (for messages).
    pub path: PathBuf,
    /// Whether it is a qcow2 image whose guest-visible disk is stored.
    pub qcow2: bool,
    /// Opened beneath a tenant's root ([`crate::roots`]): nothing it names (a qcow2
    /// backing or data file) may be opened, except that a fork's overlay may name its
    /// parent's payload, whose bytes come from the store.
    pub confined: bool,
    file: File,
    size: u64,
}

impl Input {
    /// Open the input at `path` (a regular file or block device) named `name`
    /// (default: the file's base name, less `.qcow2` for a qcow2 image, so a fork's
    /// `root.qcow2` commits back as `root`).
    pub fn new(role: Role, name: Option<&str>, path: &Path, format: Format) -> Result<Input> {
        if path.as_os_str().is_empty() {
            return Err(Error::Invalid(format!("the {role} input names no file")));
        }
        let inp = open_input(path)
            .map_err(|e| Error::Input(format!("{role} {}: {e}", path.display())))?;
        Input::from_file(role, name, inp.file, inp.size, path, format, false)
    }

    /// An input already opened (and checked) by the caller, e.g. beneath a tenant's
    /// root with [`crate::roots::Roots::open`]; `confined` as the field says.
    pub fn from_file(
        role: Role,
        name: Option<&str>,
        file: File,
        size: u64,
        path: &Path,
        format: Format,
        confined: bool,
    ) -> Result<Input> {
        let qcow2 = match format {
            Format::Raw => false,
            Format::Qcow2 => true,
            Format::Auto => crate::qcow2::is_qcow2(&file),
        };
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let base = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "cannot take a file name from {}; give one",
                        path.display()
                    ))
                })?;
                match base.strip_suffix(".qcow2") {
                    Some(stem) if qcow2 && !stem.is_empty() => stem.to_string(),
                    _ => base.to_string(),
                }
            }
        };
        Ok(Input {
            role,
            name,
            path: path.to_path_buf(),
            qcow2,
            confined,
            file,
            size,
        })
    }
}

/// What to create.
#[derive(Debug)]
pub struct Request {
    /// The record's fields (VM, name, tenant, metadata). Its `parent_id`, `payloads`
    /// and sizes are filled in by [`create`].
    pub new: NewSnapshot,
    /// The parent (an id, `VM/NAME` or `VM`); `None`: the VM's current snapshot.
    pub parent: Option<String>,
    /// Inputs are sparse diff layers over the parent's payloads of the same names.
    pub diff: bool,
    /// `None`: the repository's compression.
    pub compression: Option<Compression>,
    /// The files.
    pub inputs: Vec<Input>,
}

/// Progress of an ingest.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// The inputs hold this many data bytes in all (sent once, before any is read).
    Total(u64),
    /// This many more bytes were read.
    Advanced(u64),
}

/// A created snapshot and what storing each input did.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The catalog record.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Per input, in order.
    pub ingest: Vec<IngestStats>,
}

/// The parent `req` names, or its VM's current snapshot.
pub fn parent_of(catalog: &Catalog, req: &Request) -> Result<Option<Snapshot>> {
    Ok(match &req.parent {
        Some(spec) => Some(
            catalog
                .resolve(spec)
                .map_err(|e| Error::Catalog(e.context(format!("parent {spec}"))))?,
        ),
        None => match catalog.vm(&req.new.vm)?.and_then(|vm| vm.current_id) {
            Some(id) => catalog.get(&id)?,
            None => None,
        },
    })
}

/// Store a snapshot of `req.inputs` and record it. Names, tags, the parent and every
/// input are checked before any block is written.
pub fn create(
    store: &Store,
    catalog: &mut Catalog,
    req: Request,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Created> {
    if req.inputs.is_empty() {
        return Err(Error::Invalid(
            "nothing to store: give at least one disk, memory or state file".into(),
        ));
    }
    let config = store.config().clone();
    let compression = req.compression.unwrap_or(config.compression);
    let parent = parent_of(catalog, &req)?;
    if req.diff && parent.is_none() {
        return Err(Error::Invalid(format!(
            "a diff needs a parent: name one (or create a full snapshot of {} first)",
            req.new.vm
        )));
    }
    let mut new = req.new;
    new.parent_id = parent.as_ref().map(|p| p.id.clone());
    new.compression = compression.into();
    new.payloads.clear();
    // Refuse bad names, duplicates, foreign VMs and parents before reading anything.
    catalog.check_new(&new)?;
    check_payload_names(req.inputs.iter().map(|i| i.name.as_str()))?;

    // Every input was opened when it was made, so a missing file failed before any
    // work; count what there is to read.
    let mut total = 0u64;
    for i in &req.inputs {
        total += data_regions(&i.file, i.size)?
            .iter()
            .map(|r| r.end - r.start)
            .sum::<u64>();
    }
    progress(Progress::Total(total));
    let advance = |n: u64| progress(Progress::Advanced(n));

    let mut writer = store.writer(compression)?;
    let mut stats = Vec::new();
    for i in &req.inputs {
        let (manifest, st) = if req.diff && !i.qcow2 {
            let pp = parent
                .as_ref()
                .and_then(|p| p.payloads.iter().find(|p| p.name == i.name))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "the parent has no payload named {:?} to apply the diff to",
                        i.name
                    ))
                })?;
            if pp.role != i.role {
                return Err(Error::Invalid(format!(
                    "{:?} is a {} payload in the parent, not {}",
                    i.name, pp.role, i.role
                )));
            }
            ingest::ingest_diff(&mut writer, &i.file, i.size, &pp.manifest, &advance)
                .map_err(Error::from)
        } else if i.qcow2 {
            store_qcow2(
                &mut writer,
                i,
                parent.as_ref(),
                config.block_sizes.get(i.role),
                &advance,
            )
        } else {
            let bs = config.block_sizes.get(i.role);
            // Memory pages that changed since the parent are stored as deltas on the
            // parent's page at the same offset: most are small edits (README, "Guest
            // memory"). Disk blocks rewritten in place measured 2-3% smaller that way,
            // not worth reading the old blocks back.
            let base = parent
                .as_ref()
                .filter(|_| i.role == Role::Memory)
                .and_then(|p| {
                    p.payloads
                        .iter()
                        .find(|pp| pp.name == i.name && pp.role == i.role)
                })
                .map(|pp| &pp.manifest);
            // Memory pages also recur with small edits at other offsets and in other
            // VMs booted from the same image: they are stored XORed with a similar
            // stored page where that pays (README, "Guest memory").
            let opts = ingest::FullOptions {
                parent: base,
                similar: i.role == Role::Memory,
            };
            ingest::ingest_full_with(&mut writer, &i.file, i.size, bs, opts, &advance)
                .map_err(Error::from)
        }
        .map_err(|e| match e {
            Error::Store(s) => Error::Store(s.context(format!("storing {}", i.path.display()))),
            e => e,
        })?;
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
    let committed = writer
        .commit()
        .map_err(|e| e.context("writing the snapshot's blocks"))?;

    // What this snapshot added over its parent (blocks and tree nodes).
    let sizes = added_over(
        store,
        new.payloads.iter().map(|p| &p.manifest),
        parent.as_ref(),
    )?;
    new.added_bytes = sizes.added_bytes;
    new.compressed_size_bytes = sizes.compressed_size_bytes;
    new.uncompressed_size_bytes = sizes.uncompressed_size_bytes;
    let snapshot = catalog.create(&new)?;
    drop(committed);
    Ok(Created {
        snapshot,
        ingest: stats,
    })
}

/// Store the disk a qcow2 overlay shows. When its backing file is the parent's payload
/// in a stasis mount (a fork's overlay), only the clusters it allocated are read and
/// applied over the parent's manifest; otherwise the image is converted whole.
fn store_qcow2(
    w: &mut Writer<'_>,
    i: &Input,
    parent: Option<&Snapshot>,
    block_size: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Manifest, IngestStats)> {
    let ov = crate::qcow2::Overlay::open(&i.file, &i.path, i.confined)?;
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
    if i.confined && ov.backing.is_some() {
        // Converting would open the backing chain by the names the image gives.
        return Err(Error::Refused(format!(
            "{}: a qcow2 image backed by {:?}, which is not this snapshot's parent's payload{}",
            i.path.display(),
            ov.backing,
            if backed_by_parent {
                " stored plainly (it has compressed clusters)"
            } else {
                ""
            }
        )));
    }
    // A private directory: nobody else can swap a file in under the name qemu-img writes.
    let tmp = tempfile::Builder::new()
        .prefix("stasis-qcow2-")
        .tempdir()
        .map_err(|e| Error::io("making a temporary directory", e))?;
    let raw = tmp.path().join(format!("{}.raw", i.name));
    crate::qcow2::convert_to_raw(&ov, &i.path, &raw)?;
    let inp = open_input(&raw)?;
    Ok(ingest::ingest_full(
        w, &inp.file, inp.size, block_size, None, progress,
    )?)
}
