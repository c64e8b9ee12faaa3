//! Manifests: a payload as a Merkle tree of block references.
//!
//! A payload of `size` bytes is cut into `nblocks = ceil(size / block_size)` blocks at
//! fixed offsets. Each block is a [`BlockRef`]: a hole (never written), a zero block
//! (written zeros, not stored), or the id of a stored block. References are grouped
//! `fanout` at a time into tree nodes at fixed positions: a node at level 1 holds the
//! refs of blocks `[k*fanout, (k+1)*fanout)`, a node at level `l` holds the refs of
//! `fanout` nodes of level `l-1`. A node whose refs are all holes (or all zeros) is not
//! stored: its parent holds `Hole` (or `Zero`) in its place. Nodes are encoded with
//! postcard as [`NodeRecord`] and stored as content-addressed tree blobs, so a snapshot
//! that changes `k` blocks of its parent writes at most `k * height` new nodes and shares
//! the rest.
//!
//! The tree's shape is fully determined by `(nblocks, fanout)`: the height is the least
//! `h >= 1` with `fanout^h >= nblocks`, and a node's entry count follows from its
//! position. Decoding checks both, so a node of the wrong shape is reported as corrupt.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
pub use crate::format::node::{BlockRef, decode_node, encode_node};
use crate::id::{BlockId, Id};

/// The root of a payload's tree and the numbers that give it its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Logical size in bytes.
    pub size: u64,
    /// Block size in bytes (a power of two).
    pub block_size: u32,
    /// References per node.
    pub fanout: u32,
    /// The root reference (a node at level `height`, or Hole/Zero for a uniform payload).
    pub root: BlockRef,
}

/// Blocks covered by one reference at `level` (level 0 is one block).
fn span(fanout: u32, level: u32) -> u64 {
    u64::from(fanout).saturating_pow(level)
}

/// The least `h >= 1` with `fanout^h >= nblocks`.
pub fn height_for(nblocks: u64, fanout: u32) -> u32 {
    let mut h = 1;
    while span(fanout, h) < nblocks {
        h += 1;
    }
    h
}

impl Manifest {
    /// Number of blocks.
    pub fn nblocks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size))
    }

    /// Height of the tree.
    pub fn height(&self) -> u32 {
        height_for(self.nblocks(), self.fanout)
    }

    /// Length in bytes of block `i`.
    pub fn block_len(&self, i: u64) -> usize {
        let bs = u64::from(self.block_size);
        let start = i * bs;
        (self.size.saturating_sub(start)).min(bs) as usize
    }

    /// Check the shape numbers.
    pub fn validate(&self) -> Result<()> {
        if !self.block_size.is_power_of_two() || !(4096..=(4 << 20)).contains(&self.block_size) {
            return Err(Error::corrupt(format!(
                "manifest block size {} is invalid",
                self.block_size
            )));
        }
        if !(2..=4096).contains(&self.fanout) {
            return Err(Error::corrupt(format!(
                "manifest fanout {} is invalid",
                self.fanout
            )));
        }
        Ok(())
    }
}

/// Where tree nodes come from when a tree is read.
pub trait NodeSource {
    /// The bytes of the node blob `id` (checked against `id`).
    fn node_bytes(&self, id: &BlockId) -> Result<bytes::Bytes>;
}

/// Where new tree nodes go when a tree is built.
pub trait NodeSink {
    /// Store a node blob whose id is `id`.
    fn put_node(&mut self, id: BlockId, bytes: &[u8]) -> Result<()>;
}

/// Number of entries of the node at `level` whose first block is `base`.
fn node_count(nblocks: u64, fanout: u32, level: u32, base: u64) -> usize {
    let child = span(fanout, level - 1);
    let remaining = nblocks.saturating_sub(base).div_ceil(child);
    remaining.min(u64::from(fanout)) as usize
}

/// Load the children of `r` (a reference at `level >= 1` whose first block is `base`).
fn children(
    src: &dyn NodeSource,
    m: &Manifest,
    r: BlockRef,
    level: u32,
    base: u64,
) -> Result<Arc<[BlockRef]>> {
    let count = node_count(m.nblocks(), m.fanout, level, base);
    match r {
        BlockRef::Hole | BlockRef::Zero => Ok(vec![r; count].into()),
        BlockRef::Data(id) => {
            let bytes = src.node_bytes(&id)?;
            Ok(decode_node(&bytes, level, count)
                .map_err(|e| e.context(format!("node {id}")))?
                .into())
        }
    }
}

/// Visit the blocks of `range` (block indices) in order, as runs: `f(first, count, ref)`.
/// A hole or zero subtree comes as one run; stored blocks come one at a time.
pub fn visit_blocks(
    src: &dyn NodeSource,
    m: &Manifest,
    range: std::ops::Range<u64>,
    f: &mut dyn FnMut(u64, u64, BlockRef) -> Result<()>,
) -> Result<()> {
    let n = m.nblocks();
    let range = range.start..range.end.min(n);
    if range.is_empty() {
        return Ok(());
    }
    fn go(
        src: &dyn NodeSource,
        m: &Manifest,
        r: BlockRef,
        level: u32,
        base: u64,
        range: &std::ops::Range<u64>,
        f: &mut dyn FnMut(u64, u64, BlockRef) -> Result<()>,
    ) -> Result<()> {
        let end = (base + span(m.fanout, level)).min(m.nblocks());
        if end <= range.start || base >= range.end {
            return Ok(());
        }
        if level == 0 || !matches!(r, BlockRef::Data(_)) {
            let s = base.max(range.start);
            let e = end.min(range.end);
            return f(s, e - s, r);
        }
        let kids = children(src, m, r, level, base)?;
        let child = span(m.fanout, level - 1);
        for (i, k) in kids.iter().enumerate() {
            go(src, m, *k, level - 1, base + i as u64 * child, range, f)?;
        }
        Ok(())
    }
    go(src, m, m.root, m.height(), 0, &range, f)
}

/// The reference of block `i`.
pub fn lookup(src: &dyn NodeSource, m: &Manifest, i: u64) -> Result<BlockRef> {
    let mut out = BlockRef::Hole;
    visit_blocks(src, m, i..i + 1, &mut |_, _, r| {
        out = r;
        Ok(())
    })?;
    Ok(out)
}

/// Called with each stored node's id, level and references; returns whether to descend.
pub type NodeVisitor<'a> = dyn FnMut(BlockId, u32, &[BlockRef]) -> Result<bool> + 'a;

/// Every stored node of the tree, each with its level, depth first; `descend(id)` says
/// whether to look below a node (return false for subtrees already seen).
pub fn visit_nodes(src: &dyn NodeSource, m: &Manifest, f: &mut NodeVisitor<'_>) -> Result<()> {
    visit_new_nodes(src, m, &mut |_| true, f)
}

/// Like [`visit_nodes`], but `is_new(id)` is asked before a node is read: a node it
/// refuses (a subtree already walked) is neither read nor decoded. Walking many trees
/// that share most nodes then costs what their distinct nodes cost.
pub fn visit_new_nodes(
    src: &dyn NodeSource,
    m: &Manifest,
    is_new: &mut dyn FnMut(BlockId) -> bool,
    f: &mut NodeVisitor<'_>,
) -> Result<()> {
    struct Walk<'a, 'b> {
        src: &'a dyn NodeSource,
        m: &'a Manifest,
        is_new: &'a mut dyn FnMut(BlockId) -> bool,
        f: &'a mut NodeVisitor<'b>,
    }
    fn go(w: &mut Walk<'_, '_>, r: BlockRef, level: u32, base: u64) -> Result<()> {
        let BlockRef::Data(id) = r else { return Ok(()) };
        if level == 0 || !(w.is_new)(id) {
            return Ok(());
        }
        let kids = children(w.src, w.m, r, level, base)?;
        if !(w.f)(id, level, &kids)? || level == 1 {
            return Ok(());
        }
        let child = span(w.m.fanout, level - 1);
        for (i, k) in kids.iter().enumerate() {
            go(w, *k, level - 1, base + i as u64 * child)?;
        }
        Ok(())
    }
    let mut w = Walk { src, m, is_new, f };
    go(&mut w, m.root, m.height(), 0)
}

/// Builds a tree from references pushed in block order.
#[derive(Debug)]
pub struct TreeBuilder {
    fanout: u32,
    nblocks: u64,
    height: u32,
    /// `levels[l]` collects refs of level `l` for the next node of level `l+1`.
    levels: Vec<Vec<BlockRef>>,
    pushed: u64,
    root: Option<BlockRef>,
}

impl TreeBuilder {
    /// A builder for a tree of `nblocks` blocks.
    pub fn new(nblocks: u64, fanout: u32) -> Self {
        let height = height_for(nblocks, fanout);
        TreeBuilder {
            fanout,
            nblocks,
            height,
            levels: vec![Vec::new(); height as usize],
            pushed: 0,
            root: None,
        }
    }

    /// Blocks pushed so far (as block counts, whole subtrees included).
    pub fn position(&self) -> u64 {
        self.pushed
    }

    fn store(&self, level: u32, refs: &[BlockRef], sink: &mut dyn NodeSink) -> Result<BlockRef> {
        if let Some(first) = refs.first()
            && !matches!(first, BlockRef::Data(_))
            && refs.iter().all(|r| r == first)
        {
            return Ok(*first);
        }
        let bytes = encode_node(level, refs);
        let id = Id::of(&bytes);
        sink.put_node(id, &bytes)?;
        Ok(BlockRef::Data(id))
    }

    /// Push one block ref (`level == 0`) or a whole, complete subtree of `level`
    /// (which must start at the current position and fit).
    pub fn push(&mut self, level: u32, r: BlockRef, sink: &mut dyn NodeSink) -> Result<()> {
        let sp = span(self.fanout, level);
        let misaligned = !self.pushed.is_multiple_of(sp)
            || self.levels[..(level as usize).min(self.levels.len())]
                .iter()
                .any(|l| !l.is_empty());
        if misaligned || self.pushed + sp > self.nblocks || self.root.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "tree builder: misaligned subtree",
            ));
        }
        self.pushed += sp;
        if level >= self.height {
            self.root = Some(r);
            return Ok(());
        }
        self.push_ref(level, r, sink)
    }

    fn push_ref(&mut self, level: u32, r: BlockRef, sink: &mut dyn NodeSink) -> Result<()> {
        let l = level as usize;
        self.levels[l].push(r);
        if self.levels[l].len() == self.fanout as usize && level + 1 < self.height {
            let refs = std::mem::take(&mut self.levels[l]);
            let node = self.store(level + 1, &refs, sink)?;
            self.push_ref(level + 1, node, sink)?;
        }
        Ok(())
    }

    /// Store the remaining nodes and return the root.
    pub fn finish(mut self, sink: &mut dyn NodeSink) -> Result<BlockRef> {
        if self.pushed < self.nblocks {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "tree builder: not every block was pushed",
            ));
        }
        if let Some(r) = self.root {
            return Ok(r);
        }
        if self.nblocks == 0 {
            return Ok(BlockRef::Hole);
        }
        for l in 0..self.height as usize - 1 {
            if !self.levels[l].is_empty() {
                let refs = std::mem::take(&mut self.levels[l]);
                let node = self.store(l as u32 + 1, &refs, sink)?;
                self.push_ref(l as u32 + 1, node, sink)?;
            }
        }
        let top = std::mem::take(&mut self.levels[self.height as usize - 1]);
        self.store(self.height, &top, sink)
    }
}

/// A new tree: `parent` with `changes` applied (block index -> new ref), resized to
/// `new_size` bytes (new blocks past the parent's end are holes unless changed).
/// Untouched complete subtrees of the parent are reused as they are.
///
/// The caller must include in `changes` any block whose bytes differ from the parent's,
/// including a partial last block when the size changes.
pub fn apply_changes(
    src: &dyn NodeSource,
    parent: &Manifest,
    new_size: u64,
    changes: &BTreeMap<u64, BlockRef>,
    sink: &mut dyn NodeSink,
) -> Result<Manifest> {
    let new = Manifest {
        size: new_size,
        root: BlockRef::Hole,
        ..*parent
    };
    let new_n = new.nblocks();
    let parent_n = parent.nblocks();
    let mut b = TreeBuilder::new(new_n, parent.fanout);

    #[allow(clippy::too_many_arguments)]
    fn emit(
        src: &dyn NodeSource,
        parent: &Manifest,
        new_n: u64,
        changes: &BTreeMap<u64, BlockRef>,
        b: &mut TreeBuilder,
        r: BlockRef,
        level: u32,
        base: u64,
        sink: &mut dyn NodeSink,
    ) -> Result<()> {
        let parent_n = parent.nblocks();
        if base >= new_n || base >= parent_n {
            return Ok(());
        }
        let end = base + span(parent.fanout, level);
        let untouched = changes.range(base..end).next().is_none();
        if untouched && end <= new_n && end <= parent_n {
            return b.push(level, r, sink);
        }
        if level == 0 {
            return b.push(0, changes.get(&base).copied().unwrap_or(r), sink);
        }
        let kids = children(src, parent, r, level, base)?;
        let child = span(parent.fanout, level - 1);
        for (i, k) in kids.iter().enumerate() {
            emit(
                src,
                parent,
                new_n,
                changes,
                b,
                *k,
                level - 1,
                base + i as u64 * child,
                sink,
            )?;
        }
        Ok(())
    }

    if parent_n > 0 {
        emit(
            src,
            parent,
            new_n,
            changes,
            &mut b,
            parent.root,
            parent.height(),
            0,
            sink,
        )?;
    }
    for i in parent_n..new_n {
        b.push(0, changes.get(&i).copied().unwrap_or(BlockRef::Hole), sink)?;
    }
    Ok(Manifest {
        root: b.finish(sink)?,
        ..new
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Mem {
        nodes: std::cell::RefCell<HashMap<BlockId, Vec<u8>>>,
        puts: std::cell::Cell<usize>,
    }
    impl NodeSource for Mem {
        fn node_bytes(&self, id: &BlockId) -> Result<bytes::Bytes> {
            self.nodes
                .borrow()
                .get(id)
                .map(|b| bytes::Bytes::copy_from_slice(b))
                .ok_or_else(|| Error::corrupt("missing"))
        }
    }
    impl NodeSink for &Mem {
        fn put_node(&mut self, id: BlockId, bytes: &[u8]) -> Result<()> {
            self.puts.set(self.puts.get() + 1);
            self.nodes.borrow_mut().insert(id, bytes.to_vec());
            Ok(())
        }
    }

    fn refs_strategy() -> impl Strategy<Value = Vec<BlockRef>> {
        proptest::collection::vec(
            prop_oneof![
                Just(BlockRef::Hole),
                Just(BlockRef::Zero),
                (0u8..6).prop_map(|b| BlockRef::Data(Id::of(&[b]))),
            ],
            0..300,
        )
    }

    fn build(mem: &Mem, refs: &[BlockRef], fanout: u32) -> Manifest {
        let mut sink = mem;
        let mut b = TreeBuilder::new(refs.len() as u64, fanout);
        for r in refs {
            b.push(0, *r, &mut sink).expect("push");
        }
        let root = b.finish(&mut sink).expect("finish");
        Manifest {
            size: refs.len() as u64 * 4096,
            block_size: 4096,
            fanout,
            root,
        }
    }

    fn read_all(mem: &Mem, m: &Manifest) -> Vec<BlockRef> {
        let mut out = Vec::new();
        visit_blocks(mem, m, 0..m.nblocks(), &mut |_, n, r| {
            out.extend(std::iter::repeat_n(r, n as usize));
            Ok(())
        })
        .expect("visit");
        out
    }

    proptest! {
        #[test]
        fn build_then_read(refs in refs_strategy(), fanout in 2u32..9) {
            let mem = Mem::default();
            let m = build(&mem, &refs, fanout);
            prop_assert_eq!(read_all(&mem, &m), refs.clone());
            for (i, r) in refs.iter().enumerate() {
                prop_assert_eq!(lookup(&mem, &m, i as u64).expect("lookup"), *r);
            }
        }

        #[test]
        fn apply_equals_rebuild(
            refs in refs_strategy(),
            fanout in 2u32..9,
            edits in proptest::collection::vec((0u64..400, 0u8..8), 0..30),
            new_len in 0u64..400,
        ) {
            let mem = Mem::default();
            let parent = build(&mem, &refs, fanout);
            let mut expect: Vec<BlockRef> = refs.clone();
            expect.resize(new_len as usize, BlockRef::Hole);
            let mut changes = BTreeMap::new();
            for (i, v) in edits {
                if i < new_len {
                    let r = match v { 0 => BlockRef::Hole, 1 => BlockRef::Zero, b => BlockRef::Data(Id::of(&[b])) };
                    changes.insert(i, r);
                    expect[i as usize] = r;
                }
            }
            let child = apply_changes(&mem, &parent, new_len * 4096, &changes, &mut &mem).expect("apply");
            prop_assert_eq!(read_all(&mem, &child), expect.clone());
            // Same root as building the child from scratch: sharing is exact.
            let fresh = Mem::default();
            let rebuilt = build(&fresh, &expect, fanout);
            prop_assert_eq!(rebuilt.root, child.root);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), level in 1u32..4, count in 0usize..70) {
            let _ = decode_node(&bytes, level, count);
        }
    }

    #[test]
    fn small_change_writes_few_nodes() {
        let mem = Mem::default();
        let refs: Vec<BlockRef> = (0..100_000u32)
            .map(|i| BlockRef::Data(Id::of(&i.to_le_bytes())))
            .collect();
        let parent = build(&mem, &refs, 64);
        let before = mem.nodes.borrow().len();
        mem.puts.set(0);
        let changes: BTreeMap<u64, BlockRef> =
            [(5u64, BlockRef::Zero), (70_000, BlockRef::Zero)].into();
        apply_changes(&mem, &parent, parent.size, &changes, &mut &mem).expect("apply");
        // Two leaves and their paths to the root (height 3): at most 2*3 new nodes.
        let new = mem.nodes.borrow().len() - before;
        assert!(new <= 5, "added {new} nodes");
        // The partial nodes at the end are re-encoded (identical, deduplicated by the
        // writer); nothing else is.
        assert!(mem.puts.get() <= 8, "encoded {} nodes", mem.puts.get());
    }

    #[test]
    fn wrong_shape_is_corrupt() {
        let bytes = encode_node(1, &[BlockRef::Zero, BlockRef::Hole]);
        assert!(decode_node(&bytes, 1, 2).is_ok());
        assert!(decode_node(&bytes, 2, 2).is_err());
        assert!(decode_node(&bytes, 1, 3).is_err());
    }
}
