//! `stasis bench codecs`: on a sample of the user's own files, for each block size
//! and codec/level, the dedup ratio, the compression ratio and compress/decompress
//! speed per core, with the store's own block encoder (so the numbers are what a
//! repository with those settings would store).
//!
//! Sampling: `--sample` bytes in all (default 64 MiB), split evenly over the files;
//! from each file, whole 4 MiB windows (aligned to 4 MiB, the largest block size)
//! spread evenly over it, or the whole file when it is small enough. Aligned windows
//! keep blocks aligned as the store cuts them, so dedup within a file stays visible.
//! Holes read as zeros and count as zero blocks, which stasis never stores.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use stasis_store::codec::{self, Algorithm, Codec, Compression};
use stasis_store::id::Id;

use crate::output::{bar, human, parse_size, print_json};
use crate::repo::Context;

/// Measure the store on your own data.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Dedup and compression ratios and speeds per block size and codec, on a sample
    /// of FILEs.
    Codecs(CodecArgs),
}

#[derive(Debug, clap::Args)]
struct CodecArgs {
    /// Files to sample (disk images, memory files, ...).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Block sizes to try (powers of two, 4KiB to 4MiB).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4KiB,16KiB,64KiB,256KiB,1MiB,4MiB"
    )]
    block_sizes: Vec<String>,
    /// Codecs to try: none, lz4[:LEVEL], zstd[:LEVEL].
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,lz4,zstd:1,zstd:3,zstd:9,zstd:19"
    )]
    codecs: Vec<String>,
    /// Bytes to read in all, spread over the files.
    #[arg(long, default_value = "64MiB")]
    sample: String,
}

/// The sampling window (and largest block size).
const WINDOW: u64 = 4 << 20;

/// One measured combination.
#[derive(Debug, Serialize)]
struct Row {
    block_size: u64,
    codec: String,
    /// Sampled bytes.
    logical_bytes: u64,
    /// Bytes in all-zero blocks (never stored).
    zero_bytes: u64,
    /// Bytes in distinct non-zero blocks.
    unique_bytes: u64,
    /// Non-zero bytes / unique bytes.
    dedup_ratio: f64,
    /// Bytes the codec stores for the unique blocks.
    stored_bytes: u64,
    /// Unique bytes / stored bytes.
    compression_ratio: f64,
    /// Logical bytes / stored bytes: dedup, zeros and compression together.
    total_ratio: f64,
    /// Compress speed on one core, MB (10^6 bytes) of input per second.
    compress_mb_s: f64,
    /// Decompress speed on one core, MB of output per second.
    decompress_mb_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    files: Vec<PathBuf>,
    sample_bytes: u64,
    rows: Vec<Row>,
}

/// Run `bench`.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    match a.what {
        What::Codecs(c) => codecs(ctx, c),
    }
}

fn parse_codec(s: &str) -> Result<Compression> {
    let (alg, level) = match s.split_once(':') {
        Some((a, l)) => (
            a,
            Some(
                l.parse::<i32>()
                    .with_context(|| format!("bad level in codec {s:?}"))?,
            ),
        ),
        None => (s, None),
    };
    let alg: Algorithm = alg.parse()?;
    Ok(Compression::new(alg, level)?)
}

fn codec_name(c: Compression) -> String {
    match c.algorithm() {
        Algorithm::None => "none".into(),
        a => format!("{a}:{}", c.level()),
    }
}

/// Where to read: (file index, offset, length) windows, `budget` bytes in all.
fn plan_sample(sizes: &[u64], budget: u64) -> Vec<(usize, u64, u64)> {
    let per_file = budget / sizes.len().max(1) as u64;
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        if size <= per_file.max(WINDOW) {
            let mut off = 0;
            while off < size {
                out.push((i, off, WINDOW.min(size - off)));
                off += WINDOW;
            }
            continue;
        }
        let windows = (per_file / WINDOW).max(1);
        let slots = size / WINDOW; // whole windows in the file
        for k in 0..windows {
            let slot = k * slots / windows;
            out.push((i, slot * WINDOW, WINDOW));
        }
    }
    out
}

/// Blocks of `bs` bytes over the windows: (zero bytes, distinct non-zero blocks).
fn split(windows: &[Vec<u8>], bs: usize) -> (u64, Vec<&[u8]>) {
    let mut zero = 0u64;
    let mut seen: HashMap<Id, ()> = HashMap::new();
    let mut unique = Vec::new();
    for w in windows {
        for b in w.chunks(bs) {
            if b.iter().all(|&x| x == 0) {
                zero += b.len() as u64;
            } else if seen.insert(Id::of(b), ()).is_none() {
                unique.push(b);
            }
        }
    }
    (zero, unique)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e6 / secs
    }
}

/// Compress and decompress every block with `c`: (stored bytes, compress s, decompress s).
fn measure(c: Compression, blocks: &[&[u8]]) -> Result<(u64, f64, f64)> {
    let mut encoded: Vec<(Codec, Vec<u8>)> = Vec::with_capacity(blocks.len());
    let t = Instant::now();
    for b in blocks {
        let mut out = Vec::new();
        let codec = codec::compress(c, b, &mut out)?;
        encoded.push((codec, out));
    }
    let comp = t.elapsed().as_secs_f64();
    let stored = blocks
        .iter()
        .zip(&encoded)
        .map(|(b, (codec, out))| {
            if *codec == Codec::Raw {
                b.len() as u64
            } else {
                out.len() as u64
            }
        })
        .sum();
    let mut back = Vec::new();
    let t = Instant::now();
    for (b, (codec, out)) in blocks.iter().zip(&encoded) {
        let stored: &[u8] = if *codec == Codec::Raw { b } else { out };
        codec::decompress(*codec, stored, b.len(), &mut back)?;
        if back.as_slice() != *b {
            bail!("{} did not round-trip a block", codec_name(c));
        }
    }
    let decomp = t.elapsed().as_secs_f64();
    Ok((stored, comp, decomp))
}

fn codecs(ctx: &Context, a: CodecArgs) -> Result<()> {
    let mut sizes = Vec::new();
    for bs in &a.block_sizes {
        let n = parse_size(bs)?;
        if !(4096..=WINDOW).contains(&n) || !n.is_power_of_two() {
            bail!("block size {bs} is not a power of two from 4KiB to 4MiB");
        }
        sizes.push(n);
    }
    let codecs = a
        .codecs
        .iter()
        .map(|s| parse_codec(s))
        .collect::<Result<Vec<_>>>()?;
    let budget = parse_size(&a.sample)?;
    if budget == 0 {
        bail!("--sample must be more than 0 bytes");
    }
    let mut files = Vec::new();
    let mut file_sizes = Vec::new();
    for p in &a.files {
        let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let m = f.metadata()?;
        if !m.is_file() {
            bail!("{} is not a regular file", p.display());
        }
        file_sizes.push(m.len());
        files.push(f);
    }
    let plan = plan_sample(&file_sizes, budget);
    let mut windows = Vec::with_capacity(plan.len());
    for &(i, off, len) in &plan {
        let mut buf = vec![0u8; len as usize];
        files[i]
            .read_exact_at(&mut buf, off)
            .with_context(|| format!("reading {}", a.files[i].display()))?;
        windows.push(buf);
    }
    let logical: u64 = windows.iter().map(|w| w.len() as u64).sum();

    let pb = if ctx.json {
        indicatif::ProgressBar::hidden()
    } else {
        bar((sizes.len() * codecs.len()) as u64, "measuring")
    };
    let mut rows = Vec::new();
    for &bs in &sizes {
        let (zero, unique) = split(&windows, bs as usize);
        let unique_bytes: u64 = unique.iter().map(|b| b.len() as u64).sum();
        for &c in &codecs {
            let (stored, comp, decomp) = measure(c, &unique)?;
            rows.push(Row {
                block_size: bs,
                codec: codec_name(c),
                logical_bytes: logical,
                zero_bytes: zero,
                unique_bytes,
                dedup_ratio: ratio(logical - zero, unique_bytes),
                stored_bytes: stored,
                compression_ratio: ratio(unique_bytes, stored),
                total_ratio: ratio(logical, stored),
                compress_mb_s: mb_s(unique_bytes, comp),
                decompress_mb_s: mb_s(unique_bytes, decomp),
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let report = Report {
        files: a.files,
        sample_bytes: logical,
        rows,
    };
    if ctx.json {
        return print_json(&report);
    }
    println!(
        "sample: {} from {} file(s); speeds are one core, MB = 10^6 bytes",
        human(report.sample_bytes),
        report.files.len()
    );
    println!(
        "{:>9}  {:<8} {:>7} {:>7} {:>8} {:>8} {:>10} {:>10}",
        "block", "codec", "zero %", "dedup", "compr", "total", "comp MB/s", "dec MB/s"
    );
    for r in &report.rows {
        println!(
            "{:>9}  {:<8} {:>6.1}% {:>6.2}x {:>7.2}x {:>7.2}x {:>10.0} {:>10.0}",
            human(r.block_size),
            r.codec,
            100.0 * r.zero_bytes as f64 / r.logical_bytes.max(1) as f64,
            r.dedup_ratio,
            r.compression_ratio,
            r.total_ratio,
            r.compress_mb_s,
            r.decompress_mb_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_is_read_whole_and_a_big_one_in_spread_windows() {
        let mib = 1 << 20;
        // 10 MiB file, 64 MiB budget: three windows covering it, the last partial.
        assert_eq!(
            plan_sample(&[10 * mib], 64 * mib),
            vec![
                (0, 0, WINDOW),
                (0, WINDOW, WINDOW),
                (0, 2 * WINDOW, 2 * mib)
            ]
        );
        // 1 GiB file, 16 MiB budget: 4 aligned windows spread over it.
        let plan = plan_sample(&[1024 * mib], 16 * mib);
        assert_eq!(plan.len(), 4);
        assert!(
            plan.iter()
                .all(|&(_, off, len)| off % WINDOW == 0 && len == WINDOW)
        );
        assert_eq!(plan[0].1, 0);
        assert_eq!(plan[3].1, 768 * mib);
        // Two files share the budget.
        let plan = plan_sample(&[1024 * mib, 1024 * mib], 16 * mib);
        assert_eq!(plan.iter().filter(|w| w.0 == 0).count(), 2);
        assert_eq!(plan.iter().filter(|w| w.0 == 1).count(), 2);
    }

    #[test]
    fn dedup_and_zeros_are_counted_per_block() {
        let block: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut w = Vec::new();
        for _ in 0..8 {
            w.extend_from_slice(&block);
        }
        w.extend_from_slice(&[0u8; 8192]);
        let windows = vec![w];
        let (zero, unique) = split(&windows, 4096);
        assert_eq!(zero, 8192);
        assert_eq!(unique.len(), 1);
        // 8 KiB blocks: pairs of the same block are one unique block too.
        let (zero, unique) = split(&windows, 8192);
        assert_eq!((zero, unique.len()), (8192, 1));
        assert_eq!(ratio(8 * 4096, 4096), 8.0);
    }

    #[test]
    fn every_codec_round_trips_and_none_stores_as_is() {
        let text: Vec<u8> = b"snapshot ".iter().copied().cycle().take(65536).collect();
        let blocks = vec![text.as_slice()];
        for s in ["none", "lz4", "lz4:9", "zstd:1", "zstd:19"] {
            let c = parse_codec(s).expect("codec");
            let (stored, _, _) = measure(c, &blocks).expect("measure");
            if s == "none" {
                assert_eq!(stored, 65536);
            } else {
                assert!(stored < 65536 / 10, "{s}: {stored}");
            }
        }
        assert!(parse_codec("zstd:99").is_err());
        assert!(parse_codec("gzip").is_err());
    }
}
