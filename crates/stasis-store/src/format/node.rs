//! Manifest tree nodes: a [`NodeRecord`] (its level, then its [`BlockRef`]s) encoded
//! with postcard and stored as a content-addressed blob of kind `Tree`. Which level
//! and how many references a node must have follows from its place in the tree
//! ([`crate::manifest`]), so [`decode_node`] checks both.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::BlockId;

/// Default number of references per tree node.
pub const DEFAULT_FANOUT: u32 = 64;

/// What one block (or one whole subtree, inside a node) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockRef {
    /// Never written: reads as zeros, restores as a hole, and in a diff layer means
    /// "the parent's bytes".
    Hole,
    /// Written, all zeros: reads as zeros, restores as a hole, never stored.
    Zero,
    /// A stored block (or, inside nodes above level 1, a stored node).
    Data(BlockId),
}

/// The on-disk form of a tree node (postcard-encoded).
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// 1 for nodes holding block refs, `l` for nodes holding level `l-1` node refs.
    pub level: u8,
    /// The references, in order.
    pub refs: Vec<BlockRef>,
}

/// Encode a node.
pub fn encode_node(level: u32, refs: &[BlockRef]) -> Vec<u8> {
    #[derive(Serialize)]
    struct NodeRef<'a> {
        level: u8,
        refs: &'a [BlockRef],
    }
    let level = u8::try_from(level).unwrap_or(u8::MAX);
    postcard::to_allocvec(&NodeRef { level, refs }).unwrap_or_default()
}

/// Decode a node and check that it has the expected level and entry count.
pub fn decode_node(bytes: &[u8], level: u32, count: usize) -> Result<Vec<BlockRef>> {
    let rec: NodeRecord = postcard::from_bytes(bytes)
        .map_err(|e| Error::corrupt(format!("tree node does not decode: {e}")))?;
    if u32::from(rec.level) != level || rec.refs.len() != count {
        return Err(Error::corrupt(format!(
            "tree node has level {} and {} refs, expected level {level} and {count}",
            rec.level,
            rec.refs.len()
        )));
    }
    Ok(rec.refs)
}
