//! The API's JSON shapes. Responses are built from the catalog's records with the same
//! field names and values (a test checks that a snapshot serialises exactly as the
//! catalog's record does); their OpenAPI schemas are derived from these types, with
//! enumerations taken from the catalog's own lists of values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stasis_catalog::{CompressionState, Hypervisor, Kind, PowerState, Snapshot, Status};
use stasis_store::Role;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, schema::AdditionalProperties};
use utoipa::{PartialSchema, ToSchema};

/// The name pattern of snapshots and VMs.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";
const TAG_KEY_PATTERN: &str = "^[A-Za-z0-9 _.:/=+@-]+$";
const TAG_VALUE_PATTERN: &str = "^[A-Za-z0-9 _.:/=+@-]*$";

fn string_enum(values: impl IntoIterator<Item = &'static str>, nullable: bool) -> Schema {
    let mut values: Vec<serde_json::Value> = values.into_iter().map(Into::into).collect();
    let ty = if nullable {
        values.push(serde_json::Value::Null);
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(ty)
        .enum_values(Some(values))
        .into()
}

pub(crate) fn kind_schema() -> Schema {
    string_enum(Kind::ALL.iter().map(|k| k.as_str()), false)
}
pub(crate) fn hypervisor_schema() -> Schema {
    string_enum(Hypervisor::ALL.iter().map(|h| h.as_str()), false)
}
fn hypervisor_nullable_schema() -> Schema {
    string_enum(Hypervisor::ALL.iter().map(|h| h.as_str()), true)
}
fn power_state_nullable_schema() -> Schema {
    string_enum(PowerState::ALL.iter().map(|p| p.as_str()), true)
}
fn compression_state_schema() -> Schema {
    string_enum(CompressionState::ALL.iter().map(|c| c.as_str()), false)
}
pub(crate) fn status_schema() -> Schema {
    string_enum(
        [
            Status::Active,
            Status::Consolidating,
            Status::Deleted,
            Status::Error,
        ]
        .map(|s| match s {
            Status::Active => "active",
            Status::Consolidating => "consolidating",
            Status::Deleted => "deleted",
            Status::Error => "error",
        }),
        false,
    )
}
fn role_schema() -> Schema {
    string_enum(Role::ALL.map(Role::name), false)
}
fn algorithm_schema() -> Schema {
    string_enum(["zstd", "lz4"], false)
}
fn format_schema() -> Schema {
    string_enum(["auto", "raw", "qcow2"], false)
}
fn instance_state_schema() -> Schema {
    string_enum(["Stopped", "Standby", "Running"], false)
}

/// A snapshot kind, for documenting parameters (`Standby` or `Stopped`).
#[derive(Debug)]
pub struct KindName;
impl PartialSchema for KindName {
    fn schema() -> RefOr<Schema> {
        kind_schema().into()
    }
}
impl ToSchema for KindName {}

/// A snapshot status, for documenting parameters.
#[derive(Debug)]
pub struct StatusName;
impl PartialSchema for StatusName {
    fn schema() -> RefOr<Schema> {
        status_schema().into()
    }
}
impl ToSchema for StatusName {}

/// User tags: at most 50; keys 1-128 and values 0-256 characters of
/// `A-Z a-z 0-9 space _ . : / = + @ -`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(pub BTreeMap<String, String>);

impl PartialSchema for Tags {
    fn schema() -> RefOr<Schema> {
        let value = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(256))
            .pattern(Some(TAG_VALUE_PATTERN));
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some(TAG_KEY_PATTERN));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("User-defined key-value tags."))
            .max_properties(Some(stasis_catalog::fields::MAX_TAGS))
            .property_names(Some(key))
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(value.into()))))
            .into()
    }
}

impl ToSchema for Tags {}

/// Compression of a snapshot's blocks (hypeman `SnapshotCompressionConfig`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CompressionConfig {
    /// Whether blocks are compressed.
    pub enabled: bool,
    /// `zstd` (the default when enabled) or `lz4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = algorithm_schema)]
    pub algorithm: Option<String>,
    /// zstd 1-19 (default 1), lz4 0-9 (default 0; 1-9 are lz4 HC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 19)]
    pub level: Option<i32>,
}

/// One file of a snapshot.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiPayload {
    /// File name inside the snapshot.
    pub name: String,
    /// `disk`, `memory` or `state`.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// Bytes the input had allocated (its data regions).
    pub allocated: u64,
    /// Bytes in stored (non-zero) blocks.
    pub data_bytes: u64,
    /// Logical size: what `GET .../payloads/{name}` serves.
    pub size_bytes: u64,
    /// Block size of its manifest.
    pub block_size: u32,
    /// Root of its Merkle manifest (`hole`, `zero`, or a blake3 id).
    pub manifest_root: String,
}

/// A snapshot: the catalog's record, named as in the hypeman Snapshots API.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiSnapshot {
    /// 24 lowercase alphanumerics.
    pub id: String,
    /// Unique within its VM.
    pub name: String,
    /// `Standby` (memory and devices) or `Stopped` (disks only).
    #[schema(schema_with = kind_schema)]
    pub kind: String,
    /// The VM's id.
    pub source_instance_id: String,
    /// The VM's name.
    pub source_instance_name: String,
    /// The hypervisor that wrote it.
    #[schema(schema_with = hypervisor_nullable_schema)]
    pub source_hypervisor: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Logical bytes of all payloads.
    pub size_bytes: u64,
    /// Uncompressed bytes of the blocks it added over its parent.
    pub uncompressed_size_bytes: u64,
    /// Stored bytes of the blocks it added over its parent.
    pub compressed_size_bytes: u64,
    /// Compression used.
    pub compression: CompressionConfig,
    /// Where compression stands.
    #[schema(schema_with = compression_state_schema)]
    pub compression_state: String,
    /// Why compression failed.
    pub compression_error: Option<String>,
    /// User tags.
    pub tags: Tags,
    /// Free text.
    pub description: Option<String>,
    /// The snapshot it branched from.
    pub parent_id: Option<String>,
    /// `active`, `consolidating`, `deleted` or `error`.
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// Whether it is its VM's current snapshot.
    pub is_current: bool,
    /// Who made it.
    pub created_by: String,
    /// Whether it holds guest memory.
    pub includes_memory: bool,
    /// Whether the guest's filesystems were quiesced.
    pub quiesced: bool,
    /// The VM's power state when captured.
    #[schema(schema_with = power_state_nullable_schema)]
    pub power_state: Option<String>,
    /// Where it is stored.
    pub datastore: Option<String>,
    /// When it expires (RFC 3339).
    pub expires_at: Option<String>,
    /// Stored bytes it added over its parent (blocks and tree nodes).
    pub added_bytes: u64,
    /// Its files.
    pub payloads: Vec<ApiPayload>,
    /// The tenant its VM belongs to.
    pub tenant: String,
}

impl From<&Snapshot> for ApiSnapshot {
    fn from(s: &Snapshot) -> Self {
        use stasis_store::BlockRef;
        ApiSnapshot {
            id: s.id.clone(),
            name: s.name.clone(),
            kind: s.kind.as_str().into(),
            source_instance_id: s.source_instance_id.clone(),
            source_instance_name: s.source_instance_name.clone(),
            source_hypervisor: s.source_hypervisor.map(|h| h.as_str().into()),
            created_at: s.created_at.clone(),
            size_bytes: s.size_bytes,
            uncompressed_size_bytes: s.uncompressed_size_bytes,
            compressed_size_bytes: s.compressed_size_bytes,
            compression: CompressionConfig {
                enabled: s.compression.enabled,
                algorithm: s.compression.algorithm.map(|a| a.name().into()),
                level: s.compression.level,
            },
            compression_state: s.compression_state.as_str().into(),
            compression_error: s.compression_error.clone(),
            tags: Tags(s.tags.clone()),
            description: s.description.clone(),
            parent_id: s.parent_id.clone(),
            status: s.status.to_string(),
            is_current: s.is_current,
            created_by: s.created_by.clone(),
            includes_memory: s.includes_memory,
            quiesced: s.quiesced,
            power_state: s.power_state.map(|p| p.as_str().into()),
            datastore: s.datastore.clone(),
            expires_at: s.expires_at.clone(),
            added_bytes: s.added_bytes,
            payloads: s
                .payloads
                .iter()
                .map(|p| ApiPayload {
                    name: p.name.clone(),
                    role: p.role.name().into(),
                    allocated: p.allocated,
                    data_bytes: p.data_bytes,
                    size_bytes: p.manifest.size,
                    block_size: p.manifest.block_size,
                    manifest_root: match p.manifest.root {
                        BlockRef::Hole => "hole".into(),
                        BlockRef::Zero => "zero".into(),
                        BlockRef::Data(id) => id.to_hex(),
                    },
                })
                .collect(),
            tenant: s.tenant.clone(),
        }
    }
}

/// A file on the server's host to store as one payload.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct PayloadSource {
    /// The file's name inside the snapshot.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// `disk`, `memory` or `state`.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// Absolute path on the server's host, under one of the caller's tenant's roots
    /// (`--payload-root TENANT=DIR`, or its forks' `INSTANCES/TENANT/`).
    #[schema(min_length = 1)]
    pub path: String,
    /// `auto` (default: qcow2 if the file is one, else raw), `raw` or `qcow2` (store the
    /// disk the image shows).
    #[serde(default)]
    #[schema(schema_with = format_schema)]
    pub format: Option<String>,
}

/// Create a snapshot of an instance from files on the server's host (hypeman
/// `CreateSnapshotRequest`, plus stasis's fields).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct CreateSnapshotRequest {
    /// `Standby` (memory and devices captured) or `Stopped` (disks only).
    #[schema(schema_with = kind_schema)]
    pub kind: String,
    /// Unique within the VM (default: generated).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length = 63)]
    pub name: Option<String>,
    /// User tags.
    #[serde(default)]
    pub tags: Option<Tags>,
    /// Compression for this snapshot (default: the repository's).
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The snapshot it branches from (default: the VM's current snapshot).
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The payloads are sparse diff layers over the parent's payloads of the same
    /// names: holes keep the parent's bytes, written bytes (zeros too) replace them.
    #[serde(default)]
    pub diff: Option<bool>,
    /// Make it the VM's current snapshot (default true).
    #[serde(default)]
    pub make_current: Option<bool>,
    /// The hypervisor that wrote it.
    #[serde(default)]
    #[schema(schema_with = hypervisor_nullable_schema)]
    pub source_hypervisor: Option<String>,
    /// The VM's power state when captured.
    #[serde(default)]
    #[schema(schema_with = power_state_nullable_schema)]
    pub power_state: Option<String>,
    /// The guest's filesystems were quiesced.
    #[serde(default)]
    pub quiesced: Option<bool>,
    /// Expiry: RFC 3339, `YYYY-MM-DDTHH:MM:SS` (UTC) or `YYYY-MM-DD`.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Where it is stored (free text).
    #[serde(default)]
    pub datastore: Option<String>,
    /// The files, on the server's host. Left out (hypeman's body), the instance's
    /// registered files are taken, between its hooks.
    #[serde(default)]
    pub payloads: Vec<PayloadSource>,
}

/// Fork a new instance (VM) from a snapshot (hypeman `ForkSnapshotRequest`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ForkSnapshotRequest {
    /// The new instance's name.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length = 63)]
    pub name: String,
    /// `Stopped`, or `Standby` for a Standby snapshot (memory included). stasis
    /// prepares files and starts no VM, so `Running` is refused (409). Default: the
    /// snapshot's kind.
    #[serde(default)]
    #[schema(schema_with = instance_state_schema)]
    pub target_state: Option<String>,
    /// Another hypervisor: only for a Stopped snapshot.
    #[serde(default)]
    #[schema(schema_with = hypervisor_schema)]
    pub target_hypervisor: Option<String>,
}

/// Restore an instance to one of its snapshots (hypeman `SnapshotRestoreParams`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct RestoreSnapshotRequest {
    /// `Stopped` (disks only), `Standby` (a Standby snapshot's memory and state too) or
    /// `Running` (as Standby, then the instance's post-restore hook starts it; 409
    /// without one). Default: Standby snapshots `Running` when the instance has a
    /// post-restore hook, else `Standby`; Stopped snapshots `Stopped`.
    #[serde(default)]
    #[schema(schema_with = instance_state_schema)]
    pub target_state: Option<String>,
    /// Another hypervisor: only to restore `Stopped`. Default: the snapshot's.
    #[serde(default)]
    #[schema(schema_with = hypervisor_schema)]
    pub target_hypervisor: Option<String>,
}

/// One file of a forked or restored instance.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InstanceFile {
    /// The payload's name.
    pub name: String,
    /// `disk`, `memory` or `state`.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// The file on the server's host.
    pub path: String,
    /// `qcow2 overlay`, `link into the mount` or `sparse copy`.
    pub how: String,
    /// The read-only file in the stasis mount it is backed by or links to.
    pub backing: Option<String>,
}

/// A forked or restored instance (hypeman `Instance`: the fields stasis knows).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Instance {
    /// The new VM's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What its disks come from: `stasis:snapshots/<id>` (hypeman names an OCI image
    /// here; a stasis instance's image is the snapshot its files were made from).
    pub image: String,
    /// `Stopped` or `Standby`: its files are ready, no VM runs; `Running` (a restore
    /// only): its post-restore hook started it.
    #[schema(schema_with = instance_state_schema)]
    pub state: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The hypervisor to run it with.
    #[schema(schema_with = hypervisor_nullable_schema)]
    pub hypervisor: Option<String>,
    /// Tags (none yet).
    pub tags: Tags,
    /// The snapshot it was forked from (a fork only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
    /// The snapshot it was restored to (a restore only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// The directory holding its files, on the server's host (a fork only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Its files.
    pub files: Vec<InstanceFile>,
}

/// A schedule's retention (hypeman `SnapshotScheduleRetention`): at least one of the
/// two, and it deletes only snapshots the schedule made.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ScheduleRetention {
    /// Keep at most this many scheduled snapshots (0: no limit by count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_count: Option<u32>,
    /// Delete scheduled snapshots older than this Go duration (`168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// `PUT /instances/{id}/snapshot-schedule` (hypeman `SnapshotScheduleUpdateParams`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetScheduleRequest {
    /// How often, a Go duration of at least `1m` (`15m`, `1h30m`).
    pub interval: String,
    /// What to keep.
    pub retention: ScheduleRetention,
    /// Names of its snapshots start with this (at most 47 characters; default
    /// `scheduled`), then `-YYYYMMDD-HHMMSS` (UTC).
    #[serde(default)]
    #[schema(max_length = 47)]
    pub name_prefix: Option<String>,
    /// Tags of its snapshots.
    #[serde(default)]
    pub metadata: Option<Tags>,
}

/// A snapshot schedule (hypeman `SnapshotSchedule`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiSchedule {
    /// The instance's id.
    pub instance_id: String,
    /// How often, as given.
    pub interval: String,
    /// What it keeps.
    pub retention: ScheduleRetention,
    /// The prefix of its snapshots' names.
    pub name_prefix: Option<String>,
    /// The tags of its snapshots.
    pub metadata: Tags,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When it runs next (RFC 3339).
    #[schema(format = DateTime)]
    pub next_run_at: String,
    /// When it last ran.
    #[schema(format = DateTime)]
    pub last_run_at: Option<String>,
    /// The snapshot its last successful run made.
    pub last_snapshot_id: Option<String>,
    /// Why its last run failed.
    pub last_error: Option<String>,
}

impl From<&stasis_catalog::Schedule> for ApiSchedule {
    fn from(s: &stasis_catalog::Schedule) -> Self {
        ApiSchedule {
            instance_id: s.vm.id.clone(),
            interval: s.interval.clone(),
            retention: ScheduleRetention {
                max_count: s.max_count,
                max_age: s.max_age.clone(),
            },
            name_prefix: s.name_prefix.clone(),
            metadata: Tags(s.metadata.clone()),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            next_run_at: s.next_run_at.clone(),
            last_run_at: s.last_run_at.clone(),
            last_snapshot_id: s.last_snapshot_id.clone(),
            last_error: s.last_error.clone(),
        }
    }
}

/// `GET /health`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_catalog::{Catalog, NewPayload, NewSnapshot};
    use stasis_store::{BlockRef, Manifest};

    #[test]
    fn a_snapshot_serialises_exactly_as_the_catalog_record() {
        let mut cat = Catalog::open_in_memory().expect("catalog");
        let payload = |name: &str, role| NewPayload {
            name: name.into(),
            role,
            allocated: 4096,
            data_bytes: 4096,
            manifest: Manifest {
                size: 1 << 20,
                block_size: 65536,
                fanout: 64,
                root: BlockRef::Zero,
            },
        };
        let mut n = NewSnapshot::new(
            "web",
            "base",
            "test",
            vec![payload("root", Role::Disk), payload("mem", Role::Memory)],
        );
        n.tags.insert("env".into(), "prod".into());
        n.source_hypervisor = Some(Hypervisor::Firecracker);
        n.power_state = Some(PowerState::Suspended);
        n.kind = Kind::Standby;
        n.compression = stasis_store::Compression::default().into();
        n.expires_at = Some("2030-01-01T00:00:00Z".into());
        let a = cat.create(&n).expect("create");
        let mut bare = NewSnapshot::new("web", "child", "test", vec![payload("root", Role::Disk)]);
        bare.parent_id = Some(a.id.clone());
        bare.compression = stasis_store::Compression::none().into();
        let b = cat.create(&bare).expect("create");
        for s in [cat.get(&a.id), cat.get(&b.id)] {
            let s = s.expect("get").expect("some");
            assert_eq!(
                serde_json::to_value(ApiSnapshot::from(&s)).expect("api"),
                serde_json::to_value(&s).expect("record")
            );
        }
    }
}
