//! Garbage collection of a repository: the roots are every payload of every snapshot
//! the catalog has not deleted (consolidating and errored ones too), and the store's gc
//! ([`stasis_store::collect_garbage`]) keeps exactly what they reach.

use stasis_catalog::Catalog;
use stasis_store::{GcOptions, GcReport, Manifest, Phase, Store, collect_garbage};

use crate::error::Result;

/// Every payload the catalog keeps, named `ID/PAYLOAD`.
pub fn roots(catalog: &Catalog) -> stasis_catalog::Result<Vec<(String, Manifest)>> {
    Ok(catalog
        .list(None)?
        .into_iter()
        .flat_map(|s| {
            s.payloads
                .into_iter()
                .map(move |p| (format!("{}/{}", s.id, p.name), p.manifest))
        })
        .collect())
}

/// Collect: remove blocks no snapshot uses and repack packs that became mostly garbage.
/// The roots are read after the store has waited for running create sessions, so a
/// snapshot committed meanwhile is kept.
pub fn collect(
    store: &Store,
    catalog: &Catalog,
    opts: &GcOptions,
    progress: &dyn Fn(Phase),
) -> Result<GcReport> {
    let mut read_roots = || {
        roots(catalog).map_err(|e| {
            stasis_store::Error::new(stasis_store::ErrorKind::Repository, e.to_string())
        })
    };
    Ok(collect_garbage(store, opts, &mut read_roots, progress)?)
}
