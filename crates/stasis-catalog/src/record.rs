//! The catalog's records. JSON field names follow the hypeman Snapshots API where it
//! has the field, and the VMSNAPSHOT definition otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stasis_store::{Algorithm, Compression, Manifest, Role};

use crate::error::{Error, ErrorKind};
use crate::fields::{CompressionState, Hypervisor, Kind, PowerState};

/// A snapshot's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Complete and readable.
    Active,
    /// Being merged into its children before removal.
    Consolidating,
    /// Deleted, kept listable until gc.
    Deleted,
    /// Failed.
    Error,
}

impl FromStr for Status {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "active" => Ok(Status::Active),
            "consolidating" => Ok(Status::Consolidating),
            "deleted" => Ok(Status::Deleted),
            "error" => Ok(Status::Error),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown status {s:?}"),
            )),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Active => "active",
            Status::Consolidating => "consolidating",
            Status::Deleted => "deleted",
            Status::Error => "error",
        })
    }
}

/// The compression a snapshot was written with, as the hypeman API shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionInfo {
    /// Whether blocks are compressed.
    pub enabled: bool,
    /// `zstd` or `lz4` (absent when disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// The level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
}

impl From<Compression> for CompressionInfo {
    fn from(c: Compression) -> Self {
        match c.algorithm() {
            Algorithm::None => CompressionInfo {
                enabled: false,
                algorithm: None,
                level: None,
            },
            a => CompressionInfo {
                enabled: true,
                algorithm: Some(a),
                level: Some(c.level()),
            },
        }
    }
}

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Payload {
    /// File name inside the snapshot.
    pub name: String,
    /// Disk, memory or state.
    pub role: Role,
    /// Bytes the input had allocated (its data regions).
    pub allocated: u64,
    /// Bytes in stored (non-zero) blocks.
    pub data_bytes: u64,
    /// The payload's tree.
    #[serde(flatten, serialize_with = "ser_manifest")]
    pub manifest: Manifest,
}

fn ser_manifest<S: serde::Serializer>(m: &Manifest, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    use stasis_store::BlockRef;
    let mut map = s.serialize_map(Some(3))?;
    map.serialize_entry("size_bytes", &m.size)?;
    map.serialize_entry("block_size", &m.block_size)?;
    let root = match m.root {
        BlockRef::Hole => "hole".to_string(),
        BlockRef::Zero => "zero".to_string(),
        BlockRef::Data(id) => id.to_hex(),
    };
    map.serialize_entry("manifest_root", &root)?;
    map.end()
}

/// A snapshot record. Field names and values are the hypeman Snapshots API's where it
/// has the field, the VMSNAPSHOT definition's otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// 24 lowercase alphanumerics.
    pub id: String,
    /// Unique within its VM.
    pub name: String,
    /// `Standby` (memory and devices) or `Stopped` (disks only).
    pub kind: Kind,
    /// The VM's id.
    pub source_instance_id: String,
    /// The VM's name.
    pub source_instance_name: String,
    /// The hypervisor that wrote it.
    pub source_hypervisor: Option<Hypervisor>,
    /// RFC 3339.
    pub created_at: String,
    /// Logical bytes of all payloads.
    pub size_bytes: u64,
    /// Uncompressed bytes of the blocks it added over its parent.
    pub uncompressed_size_bytes: u64,
    /// Stored bytes of the blocks it added over its parent.
    pub compressed_size_bytes: u64,
    /// Compression used.
    pub compression: CompressionInfo,
    /// Where compression stands.
    pub compression_state: CompressionState,
    /// Why compression failed.
    pub compression_error: Option<String>,
    /// User tags.
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: Option<String>,
    /// The snapshot it branched from.
    pub parent_id: Option<String>,
    /// `active`, `consolidating`, `deleted` or `error`.
    pub status: Status,
    /// Whether it is its VM's current snapshot.
    pub is_current: bool,
    /// Who made it.
    pub created_by: String,
    /// Whether it holds guest memory.
    pub includes_memory: bool,
    /// Whether the guest's filesystems were quiesced.
    pub quiesced: bool,
    /// The VM's power state when captured.
    pub power_state: Option<PowerState>,
    /// Where it is stored.
    pub datastore: Option<String>,
    /// When it expires (RFC 3339).
    pub expires_at: Option<String>,
    /// Stored, allocated bytes this snapshot added over its parent (blocks and tree
    /// nodes it does not share with the parent).
    pub added_bytes: u64,
    /// Its files.
    pub payloads: Vec<Payload>,
    /// The tenant its VM belongs to (see [`crate::DEFAULT_TENANT`]).
    pub tenant: String,
}

/// One entry of a snapshot's activity timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// RFC 3339.
    pub at: String,
    /// `created`, `became_current`, `forked`, `consolidating`, `deleted`, `verified`,
    /// `error`, `tagged`, `reparented`.
    pub action: String,
    /// Who.
    pub actor: String,
    /// What.
    pub detail: String,
}

/// A VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vm {
    /// Generated id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Its current snapshot.
    pub current_id: Option<String>,
    /// When it was first seen.
    pub created_at: String,
    /// The snapshot it was forked from, if any.
    pub forked_from: Option<String>,
    /// The tenant it belongs to.
    pub tenant: String,
}

/// A payload to record.
#[derive(Clone, Debug)]
pub struct NewPayload {
    /// File name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Input's allocated bytes.
    pub allocated: u64,
    /// Bytes in stored blocks.
    pub data_bytes: u64,
    /// Tree root and shape.
    pub manifest: Manifest,
}

/// A snapshot to record.
#[derive(Clone, Debug)]
pub struct NewSnapshot {
    /// VM name (created if new).
    pub vm: String,
    /// Snapshot name.
    pub name: String,
    /// Parent snapshot id.
    pub parent_id: Option<String>,
    /// Who.
    pub created_by: String,
    /// Free text.
    pub description: Option<String>,
    /// Compression used.
    pub compression: CompressionInfo,
    /// See [`Snapshot::uncompressed_size_bytes`].
    pub uncompressed_size_bytes: u64,
    /// See [`Snapshot::compressed_size_bytes`].
    pub compressed_size_bytes: u64,
    /// See [`Snapshot::added_bytes`].
    pub added_bytes: u64,
    /// Make it the VM's current snapshot.
    pub make_current: bool,
    /// `Standby` or `Stopped`.
    pub kind: Kind,
    /// The hypervisor.
    pub source_hypervisor: Option<Hypervisor>,
    /// Quiesced.
    pub quiesced: bool,
    /// Power state.
    pub power_state: Option<PowerState>,
    /// Where it is stored.
    pub datastore: Option<String>,
    /// Expiry (RFC 3339, see [`crate::fields::parse_expiry`]).
    pub expires_at: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Files.
    pub payloads: Vec<NewPayload>,
    /// The tenant of a VM this creates; if the VM exists it must be this tenant's.
    /// `None`: the existing VM's tenant, or [`crate::DEFAULT_TENANT`] for a new VM.
    pub tenant: Option<String>,
}

impl NewSnapshot {
    /// A snapshot of `vm` named `name` holding `payloads`, with every other field at its
    /// default: no parent, made current, `Stopped`, no tags, no expiry, created by
    /// `created_by`.
    pub fn new(
        vm: impl Into<String>,
        name: impl Into<String>,
        created_by: impl Into<String>,
        payloads: Vec<NewPayload>,
    ) -> Self {
        NewSnapshot {
            vm: vm.into(),
            name: name.into(),
            parent_id: None,
            created_by: created_by.into(),
            description: None,
            compression: CompressionInfo::default(),
            uncompressed_size_bytes: 0,
            compressed_size_bytes: 0,
            added_bytes: 0,
            make_current: true,
            kind: Kind::Stopped,
            source_hypervisor: None,
            quiesced: false,
            power_state: None,
            datastore: None,
            expires_at: None,
            tags: BTreeMap::new(),
            payloads,
            tenant: None,
        }
    }
}

/// What a new token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMode {
    /// Reads only; writes are refused.
    ReadOnly,
    /// Reads and writes, naming files only under its tenant's own roots.
    ReadWrite,
    /// Reads and writes, and may also name files under the server-wide roots.
    Admin,
}

/// A bearer token of the HTTP API. Only a hash of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Token {
    /// Public id, for `token list` and `token revoke`.
    pub id: String,
    /// The tenant whose VMs and snapshots it sees.
    pub tenant: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// Whether it has the admin scope: it may also name files under the server-wide
    /// payload roots (it still sees only its tenant's VMs and snapshots).
    pub admin: bool,
    /// RFC 3339.
    pub created_at: String,
    /// When it was revoked (RFC 3339); a revoked token authenticates nothing.
    pub revoked_at: Option<String>,
}
