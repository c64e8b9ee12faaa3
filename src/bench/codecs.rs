//! `bench codecs`: dedup per block size and, on the unique blocks, each codec's ratio
//! and single-core speed, through the store's own encoder and decoder.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use stasis_store::{Algorithm, Codec, Compression, Id, compress, decompress};

use super::sample::{Block, Sample};

/// A codec setting to measure, as the user wrote it (`zstd:3`, `lz4`, `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecSpec(pub Compression);

impl CodecSpec {
    /// Parse `ALGORITHM[:LEVEL]`.
    pub fn parse(s: &str) -> Result<CodecSpec> {
        let (alg, level) = match s.trim().split_once(':') {
            Some((a, l)) => (
                a,
                Some(
                    l.parse::<i32>()
                        .map_err(|_| anyhow!("codec {s:?}: level {l:?} is not a number"))?,
                ),
            ),
            None => (s.trim(), None),
        };
        let alg: Algorithm = alg.parse()?;
        Ok(CodecSpec(Compression::new(alg, level)?))
    }

    /// `none`, `lz4` (the fast mode), `lz4:9`, `zstd:3`.
    pub fn label(&self) -> String {
        let c = self.0;
        match c.algorithm() {
            Algorithm::None => "none".into(),
            Algorithm::Lz4 if c.level() == 0 => "lz4".into(),
            a => format!("{a}:{}", c.level()),
        }
    }
}

/// `a / b`, or 1 when `b` is 0 (nothing to shrink).
pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Throughput in MB/s (10^6 bytes per second), `None` when too little time passed to
/// tell (under a microsecond).
pub fn mb_per_s(bytes: u64, t: Duration) -> Option<f64> {
    let secs = t.as_secs_f64();
    (secs >= 1e-6).then(|| bytes as f64 / 1e6 / secs)
}

/// What one block size does to the sample.
#[derive(Clone, Debug, Serialize)]
pub struct Dedup {
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the sample.
    pub blocks: u64,
    /// Bytes in hole blocks (no data region touches them).
    pub hole_bytes: u64,
    /// Bytes in blocks of written zeros.
    pub zero_bytes: u64,
    /// Data blocks (neither hole nor zero).
    pub data_blocks: u64,
    /// Bytes in data blocks: the logical non-zero bytes.
    pub data_bytes: u64,
    /// Distinct data blocks.
    pub unique_blocks: u64,
    /// Bytes in them.
    pub unique_bytes: u64,
    /// `data_bytes / unique_bytes`.
    pub dedup_ratio: f64,
    /// blake3 speed over the data blocks, one core (MB/s, 10^6 B/s).
    pub hash_mb_s: Option<f64>,
}

/// Classify and hash the sample's blocks of `block_size`; returns the numbers and the
/// unique data blocks (first occurrences, in order).
pub fn dedup(sample: &Sample, block_size: u64) -> Result<(Dedup, Vec<&[u8]>)> {
    let bs = usize::try_from(block_size).context("block size too large")?;
    let mut d = Dedup {
        block_size,
        blocks: 0,
        hole_bytes: 0,
        zero_bytes: 0,
        data_blocks: 0,
        data_bytes: 0,
        unique_blocks: 0,
        unique_bytes: 0,
        dedup_ratio: 1.0,
        hash_mb_s: None,
    };
    let mut seen: HashSet<Id, FxBuildHasher> = HashSet::default();
    let mut unique = Vec::new();
    let mut hashing = Duration::ZERO;
    for b in sample.blocks(bs) {
        d.blocks += 1;
        match b {
            Block::Hole(n) => d.hole_bytes += n as u64,
            Block::Zero(n) => d.zero_bytes += n as u64,
            Block::Data(data) => {
                d.data_blocks += 1;
                d.data_bytes += data.len() as u64;
                let t = Instant::now();
                let id = Id::of(data);
                hashing += t.elapsed();
                if seen.insert(id) {
                    d.unique_blocks += 1;
                    d.unique_bytes += data.len() as u64;
                    unique.push(data);
                }
            }
        }
    }
    d.dedup_ratio = ratio(d.data_bytes, d.unique_bytes);
    d.hash_mb_s = mb_per_s(d.data_bytes, hashing);
    Ok((d, unique))
}

/// One codec on one block size's unique blocks: a row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Block size in bytes.
    pub block_size: u64,
    /// The codec as labelled (`zstd:3`).
    pub codec: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its level.
    pub level: i32,
    /// Logical non-zero bytes (data blocks).
    pub data_bytes: u64,
    /// Bytes of distinct data blocks.
    pub unique_bytes: u64,
    /// What the store would write for them (compressed, or raw where that is not
    /// smaller); pack and index overhead not included.
    pub stored_bytes: u64,
    /// Unique blocks the store would keep raw because compression did not shrink them.
    pub raw_blocks: u64,
    /// `data_bytes / unique_bytes`.
    pub dedup_ratio: f64,
    /// `unique_bytes / stored_bytes`.
    pub compression_ratio: f64,
    /// `data_bytes / stored_bytes` (dedup × compression).
    pub stored_ratio: f64,
    /// Compression speed over the unique bytes, one core (MB/s of input, 10^6 B/s).
    pub compress_mb_s: Option<f64>,
    /// Decompression speed, one core (MB/s of output).
    pub decompress_mb_s: Option<f64>,
}

/// Encode every block in `unique` with `spec` through the store's encoder, then decode
/// each and check it comes back; both timed on this thread, block by block.
pub fn measure(dedup: &Dedup, spec: CodecSpec, unique: &[&[u8]]) -> Result<Row> {
    let mut stored_blobs: Vec<u8> = Vec::new();
    let mut encoded: Vec<(Codec, usize, usize)> = Vec::with_capacity(unique.len());
    let mut out = Vec::new();
    let mut compress_t = Duration::ZERO;
    let mut raw_blocks = 0u64;
    for b in unique {
        let t = Instant::now();
        let c = compress(spec.0, b, &mut out)?;
        compress_t += t.elapsed();
        let start = stored_blobs.len();
        if c == Codec::Raw {
            raw_blocks += 1;
            stored_blobs.extend_from_slice(b);
        } else {
            stored_blobs.extend_from_slice(&out);
        }
        encoded.push((c, start, stored_blobs.len()));
    }
    let mut decompress_t = Duration::ZERO;
    for (b, &(c, start, end)) in unique.iter().zip(&encoded) {
        let stored = stored_blobs
            .get(start..end)
            .context("encoded block out of range")?;
        let t = Instant::now();
        decompress(c, stored, b.len(), &mut out)?;
        decompress_t += t.elapsed();
        if out != *b {
            bail!("{} did not give a block back unchanged", spec.label());
        }
    }
    let stored_bytes = stored_blobs.len() as u64;
    ensure!(
        stored_bytes <= dedup.unique_bytes,
        "{} stored more than the raw blocks",
        spec.label()
    );
    Ok(Row {
        block_size: dedup.block_size,
        codec: spec.label(),
        algorithm: spec.0.algorithm(),
        level: spec.0.level(),
        data_bytes: dedup.data_bytes,
        unique_bytes: dedup.unique_bytes,
        stored_bytes,
        raw_blocks,
        dedup_ratio: dedup.dedup_ratio,
        compression_ratio: ratio(dedup.unique_bytes, stored_bytes),
        stored_ratio: ratio(dedup.data_bytes, stored_bytes),
        compress_mb_s: mb_per_s(dedup.unique_bytes, compress_t),
        decompress_mb_s: mb_per_s(dedup.unique_bytes, decompress_t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One data range (a helper, since `vec![a..b]` reads like a mistake).
    fn one(r: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
        vec![r]
    }

    /// Deterministic incompressible bytes.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut r = fastrand::Rng::with_seed(seed);
        let mut v = vec![0u8; n];
        r.fill(&mut v);
        v
    }

    fn sample_of(bytes: &[u8]) -> Sample {
        let mut s = Sample::default();
        s.push(bytes, one(0..bytes.len()));
        s
    }

    #[test]
    fn n_identical_blocks_dedup_n_times() {
        let block = noise(4096, 1);
        let bytes: Vec<u8> = block.iter().copied().cycle().take(4096 * 12).collect();
        let s = sample_of(&bytes);
        let (d, unique) = dedup(&s, 4096).expect("dedup");
        assert_eq!(d.blocks, 12);
        assert_eq!(d.data_blocks, 12);
        assert_eq!(d.unique_blocks, 1);
        assert_eq!(unique.len(), 1);
        assert_eq!(d.dedup_ratio, 12.0);
        // At 16 KiB there are three identical blocks of four copies each.
        let (d, _) = dedup(&s, 16384).expect("dedup");
        assert_eq!((d.blocks, d.unique_blocks), (3, 1));
        assert_eq!(d.dedup_ratio, 3.0);
    }

    #[test]
    fn zeros_and_holes_are_counted_apart_and_not_in_the_ratio() {
        // Blocks: A, A, B, zero, zero, hole, hole, hole (4 KiB each).
        let (a, b) = (noise(4096, 2), noise(4096, 3));
        let mut bytes = Vec::new();
        for x in [&a, &a, &b] {
            bytes.extend_from_slice(x);
        }
        bytes.resize(8 * 4096, 0);
        let mut s = Sample::default();
        s.push(&bytes, one(0..5 * 4096));
        let (d, unique) = dedup(&s, 4096).expect("dedup");
        assert_eq!(d.blocks, 8);
        assert_eq!(d.zero_bytes, 2 * 4096);
        assert_eq!(d.hole_bytes, 3 * 4096);
        assert_eq!(d.data_bytes, 3 * 4096);
        assert_eq!(d.unique_bytes, 2 * 4096);
        assert_eq!(d.dedup_ratio, 1.5);
        assert_eq!(unique, vec![&a[..], &b[..]]);
    }

    #[test]
    fn equal_blocks_in_different_files_dedup() {
        let a = noise(8192, 4);
        let mut s = Sample::default();
        s.push(&a, one(0..8192));
        s.push(&a, one(0..8192));
        let (d, _) = dedup(&s, 4096).expect("dedup");
        assert_eq!((d.data_blocks, d.unique_blocks), (4, 2));
        assert_eq!(d.dedup_ratio, 2.0);
    }

    #[test]
    fn none_stores_everything_raw() {
        let bytes = noise(4 * 4096, 5);
        let s = sample_of(&bytes);
        let (d, unique) = dedup(&s, 4096).expect("dedup");
        let row = measure(&d, CodecSpec::parse("none").expect("spec"), &unique).expect("row");
        assert_eq!(row.stored_bytes, row.unique_bytes);
        assert_eq!(row.raw_blocks, 4);
        assert_eq!(row.compression_ratio, 1.0);
        assert_eq!(row.stored_ratio, row.dedup_ratio);
    }

    #[test]
    fn incompressible_blocks_are_kept_raw_and_never_grow() {
        let bytes = noise(8 * 4096, 6);
        let s = sample_of(&bytes);
        let (d, unique) = dedup(&s, 4096).expect("dedup");
        for c in ["zstd:1", "zstd:19", "lz4", "lz4:9"] {
            let row = measure(&d, CodecSpec::parse(c).expect("spec"), &unique).expect("row");
            assert_eq!(row.raw_blocks, 8, "{c}");
            assert_eq!(row.stored_bytes, row.unique_bytes, "{c}");
        }
    }

    #[test]
    fn compressible_blocks_shrink_and_ratios_multiply() {
        let text: Vec<u8> = b"stasis stores blocks; "
            .iter()
            .copied()
            .cycle()
            .take(16 * 4096)
            .collect();
        // Two copies: dedup 2 at any block size up to the copy's size.
        let mut bytes = text.clone();
        bytes.extend_from_slice(&text);
        let s = sample_of(&bytes);
        let (d, unique) = dedup(&s, 16384).expect("dedup");
        assert!(d.dedup_ratio >= 2.0);
        let row = measure(&d, CodecSpec::parse("zstd:3").expect("spec"), &unique).expect("row");
        assert!(row.compression_ratio > 10.0, "{}", row.compression_ratio);
        assert_eq!(row.raw_blocks, 0);
        let product = row.dedup_ratio * row.compression_ratio;
        assert!((row.stored_ratio - product).abs() < 1e-9 * product);
    }

    #[test]
    fn specs_parse_and_label() {
        let label = |s: &str| CodecSpec::parse(s).map(|c| c.label()).ok();
        assert_eq!(label("none").as_deref(), Some("none"));
        assert_eq!(label("lz4").as_deref(), Some("lz4"));
        assert_eq!(label("lz4:0").as_deref(), Some("lz4"));
        assert_eq!(label("lz4:9").as_deref(), Some("lz4:9"));
        assert_eq!(label("zstd").as_deref(), Some("zstd:1"));
        assert_eq!(label("ZSTD:19").as_deref(), Some("zstd:19"));
        assert!(label("zstd:20").is_none());
        assert!(label("zstd:x").is_none());
        assert!(label("gzip").is_none());
    }

    #[test]
    fn arithmetic() {
        assert_eq!(ratio(10, 0), 1.0);
        assert_eq!(ratio(10, 4), 2.5);
        assert_eq!(mb_per_s(5_000_000, Duration::from_secs(2)), Some(2.5));
        assert_eq!(mb_per_s(1, Duration::ZERO), None);
    }
}
