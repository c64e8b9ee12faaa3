//! qcow2 inputs: a fork's overlay committed back. `qemu-img map` says which clusters the
//! overlay itself allocated; only those are read (from their offsets in the qcow2 file)
//! and applied over the parent's manifest. Anything else (another backing file,
//! compressed clusters) falls back to converting the whole image to raw first.
//!
//! The image is always read through the descriptor it was opened with: qemu-img is
//! handed `/proc/<our pid>/fd/<fd>` in a `json:` filename with `"backing": null`, so it
//! reads that very file and opens nothing the image names. Only a conversion of an
//! image with a backing file, for an unconfined input (the CLI), lets qemu-img open the
//! chain by name. The backing file's name and the external-data-file bit come from the
//! header, read here.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use stasis_store::LayerSource;

use crate::error::{Error, Result};

const MAGIC: [u8; 4] = *b"QFI\xfb";
/// The header's incompatible-feature bit for an external data file.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
/// Longest backing file name the format allows.
const MAX_BACKING_NAME: u32 = 1023;

/// Whether `file` starts with the qcow2 magic.
pub fn is_qcow2(file: &File) -> bool {
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).is_ok() && magic == MAGIC
}

/// What the header says that matters before qemu-img is run.
#[derive(Debug)]
struct Header {
    backing: Option<String>,
    external_data: bool,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn header(file: &File, shown: &Path) -> Result<Header> {
    let bad = |what: &str| Error::Input(format!("{}: {what}", shown.display()));
    let mut h = [0u8; 80];
    file.read_exact_at(&mut h, 0)
        .map_err(|_| bad("too short for a qcow2 header"))?;
    if h[..4] != MAGIC {
        return Err(bad("not a qcow2 image"));
    }
    let version = be32(&h, 4);
    let (offset, len) = (be64(&h, 8), be32(&h, 16));
    let external_data = version >= 3 && be64(&h, 72) & EXTERNAL_DATA_FILE != 0;
    let backing = if offset == 0 || len == 0 {
        None
    } else {
        if len > MAX_BACKING_NAME {
            return Err(bad("backing file name longer than qcow2 allows"));
        }
        let mut name = vec![0u8; len as usize];
        file.read_exact_at(&mut name, offset)
            .map_err(|_| bad("backing file name past the end of the image"))?;
        Some(String::from_utf8(name).map_err(|_| bad("backing file name is not UTF-8"))?)
    };
    Ok(Header {
        backing,
        external_data,
    })
}

/// A `json:` filename for qemu-img that reads `file` itself and no backing file.
fn by_descriptor(file: &File) -> String {
    let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
    let opts = serde_json::json!({
        "driver": "qcow2",
        "backing": null,
        "file": { "driver": "file", "filename": path },
    });
    format!("json:{opts}")
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

#[derive(Deserialize)]
struct MapEntry {
    start: u64,
    length: u64,
    depth: u32,
    present: bool,
    zero: bool,
    data: bool,
    offset: Option<u64>,
}

/// One range the overlay itself holds: zeros, or data at a host offset.
#[derive(Debug)]
struct Extent {
    range: Range<u64>,
    host: Option<u64>,
}

/// The clusters a qcow2 overlay allocated, readable as a layer.
#[derive(Debug)]
pub struct Overlay {
    file: File,
    /// The guest-visible size.
    pub virtual_size: u64,
    /// Its backing file, as recorded in the image.
    pub backing: Option<String>,
    extents: Vec<Extent>,
    /// Whether every allocated data cluster has a plain host offset (not compressed).
    pub plain: bool,
}

fn qemu_img(args: &[&str], image: &str, shown: &Path) -> Result<Vec<u8>> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(image)
        .output()
        .map_err(|e| Error::io("running qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(Error::Input(format!(
            "qemu-img {} {}: {}",
            args.join(" "),
            shown.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

impl Overlay {
    /// Read an overlay's size, backing file and own clusters from `file` (opened from
    /// `shown`). `confined`: refuse an image that names an external data file (qemu
    /// would open it by name).
    pub fn open(file: &File, shown: &Path, confined: bool) -> Result<Overlay> {
        let h = header(file, shown)?;
        if confined && h.external_data {
            return Err(Error::Refused(format!(
                "{}: a qcow2 image with an external data file",
                shown.display()
            )));
        }
        let image = by_descriptor(file);
        let info: Info =
            serde_json::from_slice(&qemu_img(&["info", "--output=json"], &image, shown)?)
                .map_err(|e| Error::Input(format!("reading qemu-img info: {e}")))?;
        let map: Vec<MapEntry> =
            serde_json::from_slice(&qemu_img(&["map", "--output=json"], &image, shown)?)
                .map_err(|e| Error::Input(format!("reading qemu-img map: {e}")))?;
        let mut extents = Vec::new();
        let mut plain = true;
        for e in map.into_iter().filter(|e| e.depth == 0 && e.present) {
            let host = if e.zero {
                None
            } else if e.data && e.offset.is_some() {
                e.offset
            } else {
                plain = false;
                None
            };
            extents.push(Extent {
                range: e.start..e.start + e.length,
                host,
            });
        }
        let file = file
            .try_clone()
            .map_err(|e| Error::io(format!("cannot reopen {}", shown.display()), e))?;
        Ok(Overlay {
            file,
            virtual_size: info.virtual_size,
            backing: h.backing,
            extents,
            plain,
        })
    }

    /// The guest-visible ranges the overlay wrote (zeros included).
    pub fn regions(&self) -> Vec<Range<u64>> {
        self.extents.iter().map(|e| e.range.clone()).collect()
    }

    /// Bytes the overlay allocated.
    pub fn allocated(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| e.range.end - e.range.start)
            .sum()
    }
}

impl LayerSource for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let i = self.extents.partition_point(|e| e.range.end <= offset);
        let e = self
            .extents
            .get(i)
            .filter(|e| e.range.start <= offset && offset + buf.len() as u64 <= e.range.end);
        match e {
            Some(Extent { host: None, .. }) => {
                buf.fill(0);
                Ok(())
            }
            Some(Extent {
                host: Some(h),
                range,
            }) => self.file.read_exact_at(buf, h + (offset - range.start)),
            None => Err(std::io::Error::other("read outside the overlay's clusters")),
        }
    }
}

/// Convert the whole image to a raw file at `out` (the fallback path). An image with
/// no backing file is read through `file`; one with a backing file is read by its
/// name `shown`, so qemu-img can follow the chain (never for a confined input).
pub fn convert_to_raw(ov: &Overlay, shown: &Path, out: &Path) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-O", "raw"]);
    if ov.backing.is_some() {
        cmd.args(["-f", "qcow2"]).arg(shown);
    } else {
        cmd.arg(by_descriptor(&ov.file));
    }
    let st = cmd
        .arg(out)
        .status()
        .map_err(|e| Error::io("running qemu-img (install qemu-utils)", e))?;
    if !st.success() {
        return Err(Error::Input(format!(
            "qemu-img convert of {} failed",
            shown.display()
        )));
    }
    Ok(())
}
