//! What a snapshot adds over its parent, computed from the store's trees.

use std::collections::HashSet;

use stasis_catalog::{AddedSizes, Snapshot};
use stasis_store::Result;
use stasis_store::manifest::Manifest;
use stasis_store::store::Store;
use stasis_store::verify::new_stored_bytes;

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
