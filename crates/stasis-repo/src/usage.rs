//! Space: what a snapshot adds over its parent (computed from the store's trees), what
//! it references, and where a repository's bytes are (`stasis du`).

use std::collections::HashSet;

use serde::Serialize;
use stasis_catalog::{AddedSizes, Catalog, Snapshot};
use stasis_store::{Manifest, Result, Store, new_stored_bytes};

/// Stored and raw bytes of the blocks and tree nodes reachable from `payloads` that are
/// not reachable from `parent`. Shared subtrees are skipped, so this costs O(changed
/// blocks * height) beyond one walk of the parent's tree.
pub fn added_over<'a>(
    store: &Store,
    payloads: impl IntoIterator<Item = &'a Manifest>,
    parent: Option<&Snapshot>,
) -> Result<AddedSizes> {
    let mut seen = HashSet::default();
    if let Some(p) = parent {
        for pp in &p.payloads {
            new_stored_bytes(store, &pp.manifest, &mut seen)?;
        }
    }
    let mut sizes = AddedSizes::default();
    for m in payloads {
        let (stored, raw) = new_stored_bytes(store, m, &mut seen)?;
        sizes.added_bytes += stored;
        sizes.compressed_size_bytes += stored;
        sizes.uncompressed_size_bytes += raw;
    }
    Ok(sizes)
}

/// Space of one snapshot ([`snapshot_usage`]).
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotSpace {
    /// Its id.
    pub id: String,
    /// Its size as the guest sees it.
    pub logical_bytes: u64,
    /// Its non-zero bytes.
    pub data_bytes: u64,
    /// Distinct bytes of the blocks it references, before compression.
    pub referenced_unique_bytes: u64,
    /// Their stored bytes (blocks and tree nodes).
    pub referenced_stored_bytes: u64,
    /// Stored bytes it added over its parent.
    pub added_bytes: u64,
}

/// One snapshot in a repository's usage.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotLine {
    /// Its id.
    pub id: String,
    /// Its VM's name.
    pub vm: String,
    /// Its name.
    pub name: String,
    /// Its parent.
    pub parent_id: Option<String>,
    /// Its size as the guest sees it.
    pub logical_bytes: u64,
    /// Its non-zero bytes.
    pub data_bytes: u64,
    /// Stored bytes it added over its parent.
    pub added_bytes: u64,
}

/// Space of a whole repository ([`repository_usage`]).
#[derive(Clone, Debug, Serialize)]
pub struct RepoSpace {
    /// Snapshots (not deleted).
    pub snapshots: usize,
    /// Their sizes as guests see them.
    pub logical_bytes: u64,
    /// Their non-zero bytes.
    pub data_bytes: u64,
    /// Distinct block bytes after dedup, before compression.
    pub unique_bytes: u64,
    /// Stored block bytes.
    pub stored_data_bytes: u64,
    /// Stored tree nodes.
    pub stored_tree_bytes: u64,
    /// Pack objects.
    pub pack_bytes: u64,
    /// Index objects.
    pub index_bytes: u64,
    /// Packs, index and catalog.
    pub repository_bytes: u64,
    /// Data bytes over unique bytes.
    pub dedup_ratio: f64,
    /// Unique bytes over stored block bytes.
    pub compression_ratio: f64,
    /// Each snapshot.
    pub per_snapshot: Vec<SnapshotLine>,
    /// This host's cache of the object store's pieces, for a store in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<stasis_s3::CacheStats>,
}

/// `a / b`, and 1 when `b` is 0.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The space snapshot `spec` (an id, `VM/NAME` or `VM`) references and adds.
pub fn snapshot_usage(
    store: &Store,
    catalog: &Catalog,
    spec: &str,
) -> crate::Result<SnapshotSpace> {
    let s = catalog.resolve(spec)?;
    let mut seen = HashSet::default();
    let (mut stored, mut raw) = (0, 0);
    for p in &s.payloads {
        let (st, r) = new_stored_bytes(store, &p.manifest, &mut seen)?;
        stored += st;
        raw += r;
    }
    Ok(SnapshotSpace {
        id: s.id.clone(),
        logical_bytes: s.size_bytes,
        data_bytes: s.payloads.iter().map(|p| p.data_bytes).sum(),
        referenced_unique_bytes: raw,
        referenced_stored_bytes: stored,
        added_bytes: s.added_bytes,
    })
}

/// The space of the whole repository, with `catalog_bytes` for the catalog.
pub fn repository_usage(
    store: &Store,
    catalog: &Catalog,
    catalog_bytes: u64,
) -> crate::Result<RepoSpace> {
    let snaps = catalog.list(None)?;
    let space = store.space()?;
    let data: u64 = snaps
        .iter()
        .flat_map(|s| &s.payloads)
        .map(|p| p.data_bytes)
        .sum();
    Ok(RepoSpace {
        snapshots: snaps.len(),
        logical_bytes: snaps.iter().map(|s| s.size_bytes).sum(),
        data_bytes: data,
        unique_bytes: space.unique_bytes,
        stored_data_bytes: space.stored_data_bytes,
        stored_tree_bytes: space.stored_tree_bytes,
        pack_bytes: space.pack_bytes,
        index_bytes: space.index_bytes,
        repository_bytes: space.pack_bytes + space.index_bytes + catalog_bytes,
        dedup_ratio: ratio(data, space.unique_bytes),
        compression_ratio: ratio(space.unique_bytes, space.stored_data_bytes),
        cache: None,
        per_snapshot: snaps
            .iter()
            .map(|s| SnapshotLine {
                id: s.id.clone(),
                vm: s.source_instance_name.clone(),
                name: s.name.clone(),
                parent_id: s.parent_id.clone(),
                logical_bytes: s.size_bytes,
                data_bytes: s.payloads.iter().map(|p| p.data_bytes).sum(),
                added_bytes: s.added_bytes,
            })
            .collect(),
    })
}
