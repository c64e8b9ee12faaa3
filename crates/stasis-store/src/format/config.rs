//! Repository configuration: the `config` object, JSON.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::node::DEFAULT_FANOUT;
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::Compression;

/// Version of the repository layout this code writes. Version 2 adds delta blocks
/// ([`crate::format::codec::Codec::ZstdDelta`]) and compressed pack tables and index files
/// (`crate::format::raw::COMPACT_FORMAT_VERSION`); version 3 adds frames whose members may be
/// XORed with similar blocks ([`crate::format::codec::Codec::ZstdFrameXor`]) and index files
/// with similarity features (`crate::format::raw::FEATURES_FORMAT_VERSION`). A repository
/// stays readable by the releases of its version, because nothing newer is written
/// into it.
pub const REPO_VERSION: u32 = 3;

/// The oldest layout this code reads (and writes, in its own terms).
pub const MIN_REPO_VERSION: u32 = 1;

/// The first layout that may hold delta blocks and compressed tables.
pub const DELTA_REPO_VERSION: u32 = 2;

/// The first layout that may hold XOR frame members and similarity features.
pub const SIMILAR_REPO_VERSION: u32 = 3;

pub use super::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

/// What a payload of a snapshot is; each role has its own block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A disk image.
    Disk,
    /// A guest memory file.
    Memory,
    /// A small state file (vmstate, config.json, ...).
    State,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Disk, Role::Memory, Role::State];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Disk => "disk",
            Role::Memory => "memory",
            Role::State => "state",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "disk" => Ok(Role::Disk),
            "memory" | "mem" => Ok(Role::Memory),
            "state" => Ok(Role::State),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown role {s:?} (expected disk, memory or state)"),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Block size per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSizes {
    /// For disk images.
    pub disk: u32,
    /// For guest memory files.
    pub memory: u32,
    /// For state files.
    pub state: u32,
}

impl Default for BlockSizes {
    /// Chosen from measurements on real ext4 images and guest memory (see docs/measurements/):
    /// 64 KiB disk blocks dedup in-place edits well with small metadata and fast reads;
    /// memory dedups only at page granularity (sibling guests hold the same pages at
    /// other offsets), so memory uses 4 KiB.
    fn default() -> Self {
        BlockSizes {
            disk: 64 << 10,
            memory: 4 << 10,
            state: 64 << 10,
        }
    }
}

impl BlockSizes {
    /// The block size of `role`.
    pub fn get(&self, role: Role) -> u32 {
        match role {
            Role::Disk => self.disk,
            Role::Memory => self.memory,
            Role::State => self.state,
        }
    }

    /// Set the block size of `role`, checking it.
    pub fn set(&mut self, role: Role, size: u64) -> Result<()> {
        let size = check_block_size(size)?;
        match role {
            Role::Disk => self.disk = size,
            Role::Memory => self.memory = size,
            Role::State => self.state = size,
        }
        Ok(())
    }
}

/// A block size must be a power of two from 4 KiB to 4 MiB.
pub fn check_block_size(size: u64) -> Result<u32> {
    match u32::try_from(size) {
        Ok(s) if s.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&s) => Ok(s),
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("block size {size} is not a power of two from 4 KiB to 4 MiB"),
        )),
    }
}

/// The repository's settings, fixed at `init` (compression can be overridden per write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Layout version.
    pub version: u32,
    /// Random id of this repository.
    pub id: String,
    /// Block size per role.
    pub block_sizes: BlockSizes,
    /// Default compression.
    pub compression: Compression,
    /// References per manifest node.
    pub fanout: u32,
    /// Packs are sealed once they reach this many bytes.
    pub pack_size: u64,
    /// New data blocks are compressed together in shared frames of up to this many
    /// bytes (see `crate::frame`); 0 compresses each block alone. Repositories made
    /// before frames existed read as the default.
    #[serde(default = "default_frame_size")]
    pub frame_size: u32,
}

/// The frame size of a new repository.
pub const DEFAULT_FRAME_SIZE: u32 = 256 << 10;

fn default_frame_size() -> u32 {
    DEFAULT_FRAME_SIZE
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            version: REPO_VERSION,
            id: random_hex(16),
            block_sizes: BlockSizes::default(),
            compression: Compression::default(),
            fanout: DEFAULT_FANOUT,
            pack_size: 32 << 20,
            frame_size: DEFAULT_FRAME_SIZE,
        }
    }
}

impl StoreConfig {
    /// The format version of the packs and index files written here: compressed tables
    /// (`crate::format::raw::COMPACT_FORMAT_VERSION`) from repository version 2 on.
    pub fn object_format(&self) -> u32 {
        if self.version >= DELTA_REPO_VERSION {
            crate::format::raw::COMPACT_FORMAT_VERSION
        } else {
            crate::format::raw::FORMAT_VERSION
        }
    }

    /// The format version of the index files written here: with similarity features
    /// (`crate::format::raw::FEATURES_FORMAT_VERSION`) from repository version 3 on, else as
    /// [`StoreConfig::object_format`].
    pub fn index_format(&self) -> u32 {
        if self.version >= SIMILAR_REPO_VERSION {
            crate::format::raw::FEATURES_FORMAT_VERSION
        } else {
            self.object_format()
        }
    }

    /// Check every field.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_REPO_VERSION..=REPO_VERSION).contains(&self.version) {
            return Err(Error::new(
                ErrorKind::Repository,
                format!(
                    "repository version {} is not supported (this stasis reads \
                     {MIN_REPO_VERSION} to {REPO_VERSION})",
                    self.version
                ),
            ));
        }
        for r in Role::ALL {
            check_block_size(u64::from(self.block_sizes.get(r)))
                .map_err(|e| Error::corrupt(e.to_string()))?;
        }
        if !(2..=4096).contains(&self.fanout) || !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(Error::corrupt("config has an invalid fanout or pack size"));
        }
        if self.frame_size as usize > crate::format::codec::MAX_FRAME_BYTES {
            return Err(Error::corrupt(format!(
                "config frame size {} is over {} bytes",
                self.frame_size,
                crate::format::codec::MAX_FRAME_BYTES
            )));
        }
        Ok(())
    }
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // A failure of the OS random source leaves zeros; ids made here are not secrets.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
