//! qcow2 inputs: a fork's overlay committed back. `qemu-img map` says which clusters the
//! overlay itself allocated; only those are read (from their offsets in the qcow2 file)
//! and applied over the parent's manifest. Anything else (another backing file,
//! compressed clusters) falls back to converting the whole image to raw first.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use stasis_store::ingest::LayerSource;

use crate::error::{Error, Result};

/// Whether `path` starts with the qcow2 magic.
pub fn is_qcow2(path: &Path) -> bool {
    // Only a regular file can be an image file; opening a FIFO or a character device to
    // look would block or consume it (those are refused later with a clear message).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb"
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename")]
    backing: Option<String>,
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

fn qemu_img(args: &[&str], path: &Path) -> Result<Vec<u8>> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| Error::io("running qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(Error::Input(format!(
            "qemu-img {} {}: {}",
            args.join(" "),
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

impl Overlay {
    /// Read an overlay's size, backing file and own clusters.
    pub fn open(path: &Path) -> Result<Overlay> {
        let info: Info =
            serde_json::from_slice(&qemu_img(&["info", "--output=json", "-f", "qcow2"], path)?)
                .map_err(|e| Error::Input(format!("reading qemu-img info: {e}")))?;
        let map: Vec<MapEntry> =
            serde_json::from_slice(&qemu_img(&["map", "--output=json", "-f", "qcow2"], path)?)
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
        let file = File::open(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        Ok(Overlay {
            file,
            virtual_size: info.virtual_size,
            backing: info.backing,
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

/// Convert a whole image to a raw file at `out` (the fallback path).
pub fn convert_to_raw(path: &Path, out: &Path) -> Result<()> {
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(path)
        .arg(out)
        .status()
        .map_err(|e| Error::io("running qemu-img (install qemu-utils)", e))?;
    if !st.success() {
        return Err(Error::Input(format!(
            "qemu-img convert of {} failed",
            path.display()
        )));
    }
    Ok(())
}
