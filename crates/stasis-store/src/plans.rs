//! Published gc plans, as write sessions see them: the blobs a gc in progress may
//! remove, which a session registered after the plan never deduplicates against, nor
//! takes as a delta's base or an XOR reference. gc publishes and removes plans; a
//! store reads them when it opens a write session. (The bytes are
//! [`crate::format::plan`]'s.)

use std::collections::HashSet;

use rustc_hash::FxBuildHasher;

use crate::backend::Backend;
use crate::error::{ErrorKind, Result};
use crate::format::keys::PLAN_PREFIX;
use crate::format::plan::Plan;
use crate::id::BlockId;

/// A set of block ids.
pub(crate) type IdSet = HashSet<BlockId, FxBuildHasher>;

/// The dead blobs of every published plan: what a new write session must not
/// deduplicate against.
pub(crate) fn load_masks(backend: &dyn Backend) -> Result<IdSet> {
    let mut out = IdSet::default();
    for meta in backend.list(PLAN_PREFIX)? {
        let read = || {
            let bytes = backend.get(&meta.key, None)?;
            Plan::decode(&bytes).map_err(|e| e.context(&meta.key))
        };
        let plan = match crate::backend::read_again_if_damaged(backend, &meta.key, read) {
            Ok(p) => p,
            // Its gc finished between the listing and now.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.extend(plan.dead);
    }
    Ok(out)
}
