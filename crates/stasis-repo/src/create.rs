//! Ingest a snapshot from files: check everything, store the blocks and manifests
//! (durable once the writer commits), then record the catalog row, which is the point
//! at which the snapshot exists. A failure anywhere before that row leaves no snapshot,
//! only unreferenced packs for gc.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use stasis_catalog::{
    Catalog, Hypervisor, Kind, NewPayload, NewSnapshot, PowerState, Snapshot, check_payload_names,
    parse_expiry, validate_name,
};
use stasis_store::{
    Algorithm, Compression, FullOptions, IngestStats, Manifest, Role, Store, StoreConfig, Writer,
    data_regions, ingest_diff, ingest_full, ingest_full_with, ingest_layer, open_input,
};

use crate::error::{Error, Result};
use crate::roots::{Roots, Scope};
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

impl Format {
    /// Every format's name, as [`FromStr`] takes it.
    pub const NAMES: [&'static str; 3] = ["auto", "raw", "qcow2"];
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        match s {
            "auto" => Ok(Format::Auto),
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(Error::Invalid(format!(
                "format {s:?}: expected auto, raw or qcow2"
            ))),
        }
    }
}

/// A create request as a user gives it, in text: the CLI's flags and the API's JSON
/// both become one of these, so both follow the same rules. [`CreateSpec::into_request`]
/// checks every field, then opens the inputs, before anything is stored.
#[derive(Debug, Default)]
pub struct CreateSpec {
    /// The VM (made on first use).
    pub vm: String,
    /// The snapshot's name; `None`: `snap-` and a random suffix.
    pub name: Option<String>,
    /// `Standby` or `Stopped`, any case; `None`: Standby when a memory input is given.
    pub kind: Option<String>,
    /// The hypervisor that wrote it.
    pub hypervisor: Option<String>,
    /// `powered_on`, `powered_off` or `suspended`.
    pub power_state: Option<String>,
    /// The guest's filesystems were quiesced.
    pub quiesced: bool,
    /// Free text.
    pub description: Option<String>,
    /// Who makes it.
    pub created_by: String,
    /// Make it its VM's current snapshot.
    pub make_current: bool,
    /// Where it is stored (free text).
    pub datastore: Option<String>,
    /// Expiry, as [`stasis_catalog::parse_expiry`] reads it.
    pub expires: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// `zstd`, `lz4` or `none`; `None`: the repository's algorithm.
    pub compression: Option<String>,
    /// The compression level; `None`: the algorithm's default.
    pub level: Option<i32>,
    /// The parent (an id, `VM/NAME` or `VM`); `None`: the VM's current snapshot.
    pub parent: Option<String>,
    /// Inputs are sparse diff layers over the parent's payloads of the same names.
    pub diff: bool,
    /// The tenant of a new VM; `None`: the default tenant.
    pub tenant: Option<String>,
    /// The files, in order.
    pub inputs: Vec<InputSpec>,
}

/// One input file of a [`CreateSpec`].
#[derive(Debug, Default)]
pub struct InputSpec {
    /// How the caller named this input, for messages (`--disk "root=x.img"`,
    /// `payloads[0]`).
    pub label: String,
    /// `disk`, `memory` or `state`.
    pub role: String,
    /// The name inside the snapshot; `None`: from the file's name.
    pub name: Option<String>,
    /// The file.
    pub path: PathBuf,
    /// `auto`, `raw` or `qcow2`; `None`: auto.
    pub format: Option<String>,
}

/// Which files a request may name.
#[derive(Clone, Copy, Debug)]
pub enum Paths<'a> {
    /// Any file this process can open (the CLI, run by the files' owner).
    Host,
    /// Only files beneath the roots of `scope` ([`crate::roots`]), opened there.
    Roots(&'a Roots, Scope<'a>),
}

fn field<T>(name: &str, r: std::result::Result<T, impl std::fmt::Display>) -> Result<T> {
    r.map_err(|e| Error::Invalid(format!("{name}: {e}")))
}

impl CreateSpec {
    /// Check every field, then open each input as `paths` allows.
    pub fn into_request(self, store: &StoreConfig, paths: Paths<'_>) -> Result<Request> {
        let name = match self.name {
            Some(n) => n,
            None => format!("snap-{}", &stasis_catalog::new_id()[..12]),
        };
        validate_name(&name).map_err(|e| Error::Catalog(e.context("the snapshot's name")))?;
        let mut roles = Vec::new();
        for i in &self.inputs {
            if !["disk", "memory", "state"].contains(&i.role.as_str()) {
                return Err(Error::Invalid(format!(
                    "{}: role {:?}: expected disk, memory or state",
                    i.label, i.role
                )));
            }
            roles.push(field(&i.label, i.role.parse::<Role>())?);
        }
        let kind: Kind = match &self.kind {
            Some(k) => field("kind", k.parse())?,
            None if roles.contains(&Role::Memory) => Kind::Standby,
            None => Kind::Stopped,
        };
        let hypervisor: Option<Hypervisor> = self
            .hypervisor
            .as_deref()
            .map(|h| field("hypervisor", h.parse()))
            .transpose()?;
        let power_state: Option<PowerState> = self
            .power_state
            .as_deref()
            .map(|p| field("power state", p.parse()))
            .transpose()?;
        let expires_at = self
            .expires
            .as_deref()
            .map(|e| field("expiry", parse_expiry(e)))
            .transpose()?;
        stasis_catalog::fields::validate_tags(&self.tags)?;
        let compression = match (&self.compression, self.level) {
            (Some(c), l) => Some(Compression::new(c.parse::<Algorithm>()?, l)?),
            (None, Some(l)) => Some(Compression::new(store.compression.algorithm(), Some(l))?),
            (None, None) => None,
        };
        let mut formats = Vec::new();
        for i in &self.inputs {
            formats.push(match i.format.as_deref() {
                None => Format::Auto,
                Some(f) => field(&i.label, f.parse::<Format>())?,
            });
        }
        if self.inputs.is_empty() {
            return Err(Error::Invalid(
                "nothing to store: give at least one disk, memory or state file".into(),
            ));
        }
        // Every field is good: open the inputs, each once.
        let mut inputs = Vec::new();
        for ((i, role), format) in self.inputs.iter().zip(roles).zip(formats) {
            if let Some(n) = &i.name {
                check_payload_names([n.as_str()]).map_err(|e| {
                    Error::Catalog(e.context(format!("{}: the file's name", i.label)))
                })?;
            }
            let input = match paths {
                Paths::Host => Input::new(role, i.name.as_deref(), &i.path, format),
                Paths::Roots(roots, scope) => {
                    let path = i
                        .path
                        .to_str()
                        .ok_or_else(|| Error::Refused("a path that is not UTF-8".into()))?;
                    let opened = roots
                        .open(scope, path)
                        .map_err(|r| Error::Refused(r.reason))?;
                    Input::from_file(
                        role,
                        i.name.as_deref(),
                        opened.file,
                        opened.size,
                        &opened.shown,
                        format,
                        true,
                    )
                }
            };
            inputs.push(input.map_err(|e| match e {
                Error::Input(m) => Error::Input(format!("{}: {m}", i.label)),
                Error::Invalid(m) => Error::Invalid(format!("{}: {m}", i.label)),
                e => e,
            })?);
        }
        // Unless told, the files themselves may say which hypervisor wrote them.
        let hypervisor = hypervisor.or_else(|| {
            let heads: Vec<Vec<u8>> = inputs.iter().map(Input::head).collect();
            crate::hypervisor::detect(inputs.iter().zip(&heads).map(|(i, h)| {
                crate::hypervisor::Seen {
                    role: i.role,
                    name: &i.name,
                    head: h,
                }
            }))
        });
        let new = NewSnapshot {
            description: self.description,
            make_current: self.make_current,
            kind,
            source_hypervisor: hypervisor,
            quiesced: self.quiesced,
            power_state,
            datastore: self.datastore,
            expires_at,
            tags: self.tags,
            tenant: self.tenant,
            ..NewSnapshot::new(self.vm, name, self.created_by, Vec::new())
        };
        Ok(Request {
            new,
            parent: self.parent,
            diff: self.diff,
            compression,
            inputs,
            before_record: None,
        })
    }
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
    /// The first [`crate::hypervisor::HEAD`] bytes of a memory or state file (fewer if
    /// shorter or unreadable; none of a disk's), for telling its hypervisor.
    fn head(&self) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        if self.role == Role::Disk || self.qcow2 {
            return Vec::new();
        }
        let mut buf = vec![0u8; crate::hypervisor::HEAD];
        let mut n = 0;
        while n < buf.len() {
            match self.file.read_at(&mut buf[n..], n as u64) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        buf.truncate(n);
        buf
    }

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

/// Run right before a snapshot is recorded (all its blocks are stored); an error
/// aborts it with nothing recorded.
pub type BeforeRecord = Box<dyn FnOnce() -> Result<()> + Send>;

/// What to create.
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
    /// See [`BeforeRecord`] (an instance's post-snapshot hook).
    pub before_record: Option<BeforeRecord>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("new", &self.new)
            .field("parent", &self.parent)
            .field("diff", &self.diff)
            .field("compression", &self.compression)
            .field("inputs", &self.inputs)
            .field("before_record", &self.before_record.is_some())
            .finish()
    }
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
            ingest_diff(&mut writer, &i.file, i.size, &pp.manifest, &advance).map_err(Error::from)
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
            // parent's page at the same offset: most are small edits
            // (docs/measurements/memory.md). Disk blocks rewritten in place measured 2-3% smaller that way,
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
            // stored page where that pays (docs/measurements/memory.md).
            let opts = FullOptions {
                parent: base,
                similar: i.role == Role::Memory,
            };
            ingest_full_with(&mut writer, &i.file, i.size, bs, opts, &advance).map_err(Error::from)
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
    if let Some(f) = req.before_record {
        f()?;
    }
    committed
        .still_registered()
        .map_err(|e| e.context("the write session"))?;
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
        (Some(b), Some((p, pp))) => stasis_catalog::layout::names_payload(b, p, &pp.name),
        _ => false,
    };
    if let (true, true, Some((_, pp))) = (backed_by_parent, ov.plain, base) {
        tracing::info!(
            "{}: applying {} allocated bytes over the parent",
            i.path.display(),
            ov.allocated()
        );
        return Ok(ingest_layer(
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
    Ok(ingest_full(
        w, &inp.file, inp.size, block_size, None, progress,
    )?)
}
