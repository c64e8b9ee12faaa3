//! # stasis-guestfs
//!
//! The guest's files inside a disk snapshot, read without root and without the
//! kernel: a disk image is treated as hostile input from the guest.
//!
//! - [`Source`]: random-access bytes (a snapshot's payload, a file); a [`Window`] of
//!   one is a partition, and refuses every read outside it.
//! - [`partitions`]: GPT and MBR tables (the `gpt` crate), partitions numbered as
//!   Linux numbers them; a disk that starts with a filesystem has none.
//! - [`Filesystem`]: ext2/3/4 through `ext4-view` (pure Rust, read-only, journal
//!   replayed in memory): [`Filesystem::stat`], [`Filesystem::list`],
//!   [`Filesystem::read_file`]. Symlinks are reported, never followed out of the
//!   filesystem (an absolute target resolves at its root).
//! - [`volumes`]: every filesystem of a disk, by name (`""` for a bare one, `pN`).
//!
//! **Untrusted input.** A damaged or crafted image gives an [`Error`] (kind
//! `Corrupt`, `Unsupported`, ...) for what it damages, never a panic, a hang or a read
//! outside its payload: every read goes through a [`Window`], every chain followed
//! here (EBRs) is bounded and checked for loops, and the `gpt` crate is handed only
//! headers whose entry size it reads without asserting. `fuzz/fuzz_targets/guestfs.rs`
//! feeds mutated images through the whole surface.

mod error;
mod ext4;
mod partition;
mod source;

use std::sync::Arc;

pub use error::{Error, ErrorKind, Result};
pub use ext4::{CHUNK, Entry, Filesystem, Kind, join};
pub use partition::{
    MAX_GPT_ENTRIES, MAX_LOGICAL, Partition, SECTOR, Scheme, partitions, starts_with_ext,
};
pub use source::{Source, Window};

/// One filesystem of a disk.
#[derive(Debug)]
pub struct Volume {
    /// `""` for a disk that is a bare filesystem, `p1`, `p2`, ... for partitions.
    pub name: String,
    /// The partition, for a partitioned disk.
    pub partition: Option<Partition>,
    /// Its filesystem.
    pub fs: Filesystem,
}

/// Every ext filesystem of `disk`: the disk itself, or each partition that holds one
/// (partitions holding something else are left out). An error only for a damaged
/// table or a damaged filesystem.
pub fn volumes(disk: Arc<dyn Source>) -> Result<Vec<Volume>> {
    let parts = partitions(disk.as_ref())?;
    if parts.is_empty() {
        return Ok(Filesystem::open_whole(disk)?
            .map(|fs| Volume {
                name: String::new(),
                partition: None,
                fs,
            })
            .into_iter()
            .collect());
    }
    let mut out = Vec::new();
    for p in parts {
        let w = Window::new(disk.clone(), p.start, p.len)?;
        let name = format!("p{}", p.number);
        if let Some(fs) = Filesystem::open(w).map_err(|e| e.context(&name))? {
            out.push(Volume {
                name,
                partition: Some(p),
                fs,
            });
        }
    }
    Ok(out)
}
