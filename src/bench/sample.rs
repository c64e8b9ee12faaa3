//! The sample `bench codecs` measures: whole, aligned chunks of the inputs.
//!
//! A chunk is [`CHUNK`] bytes (4 MiB, the largest block size) at a multiple of
//! [`CHUNK`], so every block size divides it and blocks cut from a chunk are the blocks
//! the store would cut from the file. Only chunks that hold some data are candidates
//! (a chunk entirely in a hole would only add hole blocks). When the candidates fit in
//! the budget, all are read. Otherwise chunk `k` (the one at `k * CHUNK`) is read when
//! `k % stride == 0`, with one stride for every file: the first from
//! ⌈candidate bytes / budget⌉ up that keeps the sample within the budget. The sample is spread evenly over each file, and files of the same
//! layout (an image and its descendant) are sampled at the same offsets, so a block
//! that a child shares with its base at the same place is in the sample twice and
//! dedups as it would in the store.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Context as _, Result};
use indicatif::ProgressBar;
use serde::Serialize;
use stasis_store::{MAX_BLOCK_SIZE, is_zero};

/// Sample granularity: the largest block size, so every block size divides it.
pub const CHUNK: u64 = MAX_BLOCK_SIZE as u64;

/// An input file's size and data regions (sorted, disjoint).
#[derive(Clone, Debug)]
pub struct Layout {
    /// Logical size.
    pub size: u64,
    /// Where its data is (the rest are holes).
    pub regions: Vec<Range<u64>>,
}

impl Layout {
    /// Bytes in data regions.
    pub fn data_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.end - r.start).sum()
    }

    /// Indexes of the chunks that overlap a data region, ascending, without repeats.
    fn data_chunks(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for r in self.regions.iter().filter(|r| r.end > r.start) {
            let first = r.start / CHUNK;
            let last = (r.end - 1) / CHUNK;
            let from = match out.last() {
                Some(&l) if l >= first => l + 1,
                _ => first,
            };
            out.extend(from..=last);
        }
        out
    }

    /// Length of chunk `k` (the last one may be short).
    fn chunk_len(&self, k: u64) -> u64 {
        CHUNK.min(self.size.saturating_sub(k * CHUNK))
    }
}

/// A chunk chosen for the sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Which input.
    pub file: usize,
    /// Byte offset (a multiple of [`CHUNK`]).
    pub offset: u64,
    /// Bytes (less than [`CHUNK`] only at the end of a file).
    pub len: u64,
}

/// The chunks to read from `files` with at most `budget` bytes (at least one chunk is
/// allowed per file, so a budget below [`CHUNK`] still reads something), and the
/// stride used (1: everything).
pub fn plan(files: &[Layout], budget: u64) -> (Vec<Pick>, u64) {
    let chunks: Vec<Vec<u64>> = files.iter().map(Layout::data_chunks).collect();
    let picked = |stride: u64| -> Vec<Pick> {
        let mut out = Vec::new();
        for (f, (layout, ks)) in files.iter().zip(&chunks).enumerate() {
            for &k in ks.iter().filter(|&&k| k % stride == 0) {
                out.push(Pick {
                    file: f,
                    offset: k * CHUNK,
                    len: layout.chunk_len(k),
                });
            }
        }
        out
    };
    let bytes = |p: &[Pick]| p.iter().map(|p| p.len).sum::<u64>();
    let all = picked(1);
    let total = bytes(&all);
    if total <= budget {
        return (all, 1);
    }
    // The last stride worth trying: beyond it only chunk 0 of each file is left.
    let max_stride = chunks.iter().flatten().copied().max().unwrap_or(0) + 1;
    let mut stride = total.div_ceil(budget.max(1)).max(2);
    loop {
        let p = picked(stride);
        if bytes(&p) <= budget || stride >= max_stride {
            return (p, stride);
        }
        stride += 1;
    }
}

/// A chunk as read: where it sits in [`Sample::buf`] and which of its bytes are data.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// Where its bytes start in the sample buffer.
    pub start: usize,
    /// Its length.
    pub len: usize,
    /// Data ranges, relative to the chunk start (the rest are holes, zeros in `buf`).
    pub data: Vec<Range<usize>>,
}

/// Bytes read from the inputs.
#[derive(Debug, Default)]
pub struct Sample {
    /// Every chunk's bytes, back to back.
    pub buf: Vec<u8>,
    /// The chunks, in input order.
    pub chunks: Vec<Chunk>,
}

/// What the sample covers, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct SampleInfo {
    /// The inputs.
    pub files: Vec<String>,
    /// Their logical sizes, summed.
    pub logical_bytes: u64,
    /// Their data regions (not holes), summed.
    pub data_region_bytes: u64,
    /// Bytes in the sample.
    pub sampled_bytes: u64,
    /// Chunks in the sample.
    pub chunks: usize,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Every `stride`-th chunk was read (1: all of them).
    pub stride: u64,
}

/// A block of the sample, as the store would classify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block<'a> {
    /// No byte of it is in a data region (never read by the store).
    Hole(usize),
    /// Read, and every byte is zero (never stored).
    Zero(usize),
    /// Stored under its blake3 id.
    Data(&'a [u8]),
}

impl Sample {
    /// Add a chunk already in memory, with its data ranges (tests).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8], data: Vec<Range<usize>>) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.chunks.push(Chunk {
            start,
            len: bytes.len(),
            data,
        });
    }

    /// Bytes in the sample.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Cut every chunk into blocks of `block_size` (which divides [`CHUNK`], so these
    /// are the store's blocks) and classify them.
    pub fn blocks(&self, block_size: usize) -> impl Iterator<Item = Block<'_>> + '_ {
        self.chunks.iter().flat_map(move |c| {
            let bytes = &self.buf[c.start..c.start + c.len];
            bytes
                .chunks(block_size.max(1))
                .enumerate()
                .map(move |(i, b)| {
                    let lo = i * block_size;
                    let hi = lo + b.len();
                    if !c.data.iter().any(|r| r.start < hi && lo < r.end) {
                        Block::Hole(b.len())
                    } else if is_zero(b) {
                        Block::Zero(b.len())
                    } else {
                        Block::Data(b)
                    }
                })
        })
    }
}

/// Read `picks` from `files` (data regions only; holes stay zero), advancing `pb` by
/// the bytes of each chunk.
pub fn read(files: &[(String, File, Layout)], picks: &[Pick], pb: &ProgressBar) -> Result<Sample> {
    let total: u64 = picks.iter().map(|p| p.len).sum();
    let total = usize::try_from(total).context("the sample does not fit in memory")?;
    let mut sample = Sample {
        buf: Vec::with_capacity(total),
        chunks: Vec::with_capacity(picks.len()),
    };
    for p in picks {
        let (name, file, layout) = files
            .get(p.file)
            .context("a sample chunk names a file that is not an input")?;
        let len = usize::try_from(p.len).context("chunk too large")?;
        let start = sample.buf.len();
        sample.buf.resize(start + len, 0);
        let end = p.offset + p.len;
        let mut data = Vec::new();
        for r in &layout.regions {
            let (lo, hi) = (r.start.max(p.offset), r.end.min(end));
            if lo >= hi {
                continue;
            }
            let (a, b) = ((lo - p.offset) as usize, (hi - p.offset) as usize);
            file.read_exact_at(&mut sample.buf[start + a..start + b], lo)
                .with_context(|| format!("reading {name} at {lo}"))?;
            data.push(a..b);
        }
        sample.chunks.push(Chunk { start, len, data });
        pb.inc(p.len);
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One data range (a helper, since `vec![a..b]` reads like a mistake).
    fn one(r: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
        vec![r]
    }

    fn dense(size: u64) -> Layout {
        Layout {
            size,
            regions: std::iter::once(0..size).collect(),
        }
    }

    #[test]
    fn everything_when_it_fits() {
        let files = [dense(3 * CHUNK + 100), dense(CHUNK)];
        let (p, stride) = plan(&files, 1 << 40);
        assert_eq!(stride, 1);
        assert_eq!(p.len(), 5);
        assert_eq!(p[3].len, 100);
        assert_eq!(p.iter().map(|p| p.len).sum::<u64>(), 4 * CHUNK + 100);
    }

    #[test]
    fn spread_evenly_within_budget_at_the_same_offsets() {
        // Two equal 100-chunk files, 20 chunks of budget: every 10th chunk of each.
        let files = [dense(100 * CHUNK), dense(100 * CHUNK)];
        let (p, stride) = plan(&files, 20 * CHUNK);
        assert_eq!(stride, 10);
        assert_eq!(p.len(), 20);
        let offsets = |f: usize| -> Vec<u64> {
            p.iter()
                .filter(|p| p.file == f)
                .map(|p| p.offset / CHUNK)
                .collect()
        };
        assert_eq!(offsets(0), (0..100).step_by(10).collect::<Vec<_>>());
        assert_eq!(offsets(0), offsets(1));
        assert!(p.iter().all(|p| p.offset % CHUNK == 0));
    }

    #[test]
    fn budget_not_a_divisor_is_never_exceeded() {
        let files = [dense(100 * CHUNK)];
        let (p, stride) = plan(&files, 33 * CHUNK);
        assert_eq!(stride, 4, "every 3rd would be 34 chunks");
        assert_eq!(p.len(), 25);
    }

    #[test]
    fn holes_are_not_candidates() {
        // Data only in chunks 2 and 7 (a region crossing into chunk 8) of a 16-chunk file.
        let f = Layout {
            size: 16 * CHUNK,
            regions: vec![2 * CHUNK + 5..2 * CHUNK + 9, 7 * CHUNK..8 * CHUNK + 1],
        };
        let (p, _) = plan(&[f], u64::MAX);
        let ks: Vec<u64> = p.iter().map(|p| p.offset / CHUNK).collect();
        assert_eq!(ks, vec![2, 7, 8]);
    }

    #[test]
    fn a_tiny_budget_still_reads_something() {
        let (p, _) = plan(&[dense(10 * CHUNK)], 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].offset, 0);
    }

    #[test]
    fn blocks_are_classified_like_the_store_does() {
        // A 16 KiB chunk: data in its first 4 KiB block (non-zero), written zeros in the
        // second, a hole in the third and fourth.
        let mut bytes = vec![0u8; 16384];
        bytes[..4096].fill(7);
        let mut s = Sample::default();
        s.push(&bytes, one(0..8192));
        let b: Vec<Block<'_>> = s.blocks(4096).collect();
        assert_eq!(b.len(), 4);
        assert!(matches!(b[0], Block::Data(d) if d.len() == 4096));
        assert_eq!(b[1], Block::Zero(4096));
        assert_eq!(b[2], Block::Hole(4096));
        assert_eq!(b[3], Block::Hole(4096));
        // At 16 KiB the one block holds data.
        let b: Vec<Block<'_>> = s.blocks(16384).collect();
        assert!(matches!(b[..], [Block::Data(_)]));
    }

    #[test]
    fn a_short_last_chunk_gives_a_short_last_block() {
        let mut s = Sample::default();
        s.push(&[1u8; 5000], one(0..5000));
        let lens: Vec<usize> = s
            .blocks(4096)
            .map(|b| match b {
                Block::Data(d) => d.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(lens, vec![4096, 904]);
    }
}
