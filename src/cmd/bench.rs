//! `stasis bench codecs` and `stasis bench repo`.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use stasis_store::{Algorithm, check_block_size, data_regions, open_input};

use crate::bench::codecs::{self, CodecSpec, Dedup, Row};
use crate::bench::repo::{self, Report};
use crate::bench::sample::{self, Layout, SampleInfo};
use crate::bench::{block_label, chart, progress};
use crate::output::{human, parse_size, print_json};
use crate::repo::Context;

/// Measure block sizes and codecs on your files, or a repository end to end.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Dedup per block size and each codec's ratio and single-core speed on a sample
    /// of FILEs, through the store's own encoder.
    Codecs(CodecsArgs),
    /// Ingest, restore and random-read a generated image on the repository (a scratch
    /// VM's snapshot, deleted at the end).
    Repo(RepoArgs),
}

/// `bench codecs`.
#[derive(Debug, clap::Args)]
pub struct CodecsArgs {
    /// Disk images, memory files, any files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Block sizes to try (powers of two, 4K to 4M).
    #[arg(long, value_delimiter = ',', default_value = "4K,16K,64K,256K,1M,4M")]
    block_sizes: Vec<String>,
    /// Codecs to try: none, lz4 (fast mode), lz4:1-9 (HC), zstd:1-19.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,lz4,zstd:1,zstd:3,zstd:9,zstd:19"
    )]
    codecs: Vec<String>,
    /// Bytes to read, at most: whole 4 MiB chunks spread evenly over each file, at the
    /// same offsets in every file (so a child image dedups against its base).
    #[arg(long, default_value = "256MiB", value_name = "BYTES")]
    sample: String,
    /// Also draw stored ratio against compression speed into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
}

/// `bench repo`.
#[derive(Debug, clap::Args)]
pub struct RepoArgs {
    /// Size of the generated image.
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Random 4 KiB reads per pass (cold, then warm).
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Where to write the image and its restored copy (default: $TMPDIR or /tmp).
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Keep the page cache for the cold passes (by default root drops it first).
    #[arg(long)]
    no_drop_caches: bool,
}

/// Run it.
pub fn run(ctx: &Context, a: Args) -> Result<()> {
    match a.what {
        What::Codecs(a) => codecs_cmd(ctx, a),
        What::Repo(a) => repo_cmd(ctx, a),
    }
}

#[derive(Serialize)]
struct CodecsReport {
    sample: SampleInfo,
    block_sizes: Vec<Dedup>,
    rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chart: Option<PathBuf>,
}

fn codecs_cmd(ctx: &Context, a: CodecsArgs) -> Result<()> {
    let mut block_sizes = Vec::new();
    for s in &a.block_sizes {
        let n = parse_size(s)?;
        block_sizes.push(u64::from(check_block_size(n)?));
    }
    block_sizes.sort_unstable();
    block_sizes.dedup();
    let specs = a
        .codecs
        .iter()
        .map(|s| CodecSpec::parse(s))
        .collect::<Result<Vec<_>>>()?;
    if block_sizes.is_empty() || specs.is_empty() {
        bail!("give at least one block size and one codec");
    }
    let budget = parse_size(&a.sample)?;

    let mut files = Vec::new();
    for p in &a.files {
        let inp = open_input(p).with_context(|| format!("{}", p.display()))?;
        let regions = data_regions(&inp.file, inp.size)?;
        files.push((
            p.display().to_string(),
            inp.file,
            Layout {
                size: inp.size,
                regions,
            },
        ));
    }
    let layouts: Vec<Layout> = files.iter().map(|f| f.2.clone()).collect();
    let (picks, stride) = sample::plan(&layouts, budget);
    let sampled: u64 = picks.iter().map(|p| p.len).sum();
    let pb = progress(ctx.json, sampled, true);
    pb.set_message("reading the sample");
    let sample = sample::read(&files, &picks, &pb)?;
    pb.finish_and_clear();
    let info = SampleInfo {
        files: files.iter().map(|f| f.0.clone()).collect(),
        logical_bytes: layouts.iter().map(|l| l.size).sum(),
        data_region_bytes: layouts.iter().map(Layout::data_bytes).sum(),
        sampled_bytes: sample.len() as u64,
        chunks: sample.chunks.len(),
        chunk_bytes: sample::CHUNK,
        stride,
    };

    let pb = progress(
        ctx.json,
        (block_sizes.len() * (1 + specs.len())) as u64,
        false,
    );
    let mut dedups = Vec::new();
    let mut rows = Vec::new();
    for &bs in &block_sizes {
        pb.set_message(format!("{} blake3", block_label(bs)));
        let (d, unique) = codecs::dedup(&sample, bs)?;
        pb.inc(1);
        for &spec in &specs {
            pb.set_message(format!("{} {}", block_label(bs), spec.label()));
            rows.push(codecs::measure(&d, spec, &unique)?);
            pb.inc(1);
        }
        dedups.push(d);
    }
    pb.finish_and_clear();

    if let Some(path) = &a.chart {
        let names: Vec<String> = a
            .files
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            })
            .collect();
        let title = format!(
            "stasis bench codecs: {} ({} sampled)",
            names.join(", "),
            human(info.sampled_bytes)
        );
        chart::draw(path, &rows, &title).with_context(|| format!("drawing {}", path.display()))?;
    }
    let report = CodecsReport {
        sample: info,
        block_sizes: dedups,
        rows,
        chart: a.chart.clone(),
    };
    if ctx.json {
        return print_json(&report);
    }
    print_codecs(&report);
    Ok(())
}

fn speed(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn print_codecs(r: &CodecsReport) {
    let s = &r.sample;
    println!(
        "sample: {} of {} file(s) ({} logical, {} in data regions): {} chunks of {} holding data, {}",
        human(s.sampled_bytes),
        s.files.len(),
        human(s.logical_bytes),
        human(s.data_region_bytes),
        s.chunks,
        human(s.chunk_bytes),
        match s.stride {
            1 => "all of them".to_string(),
            n => format!("those at every {n}th chunk offset"),
        }
    );
    println!();
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>6} {:>9}",
        "block", "holes", "zeros", "data", "unique", "dedup", "blake3"
    );
    for d in &r.block_sizes {
        println!(
            "{:>8} {:>10} {:>10} {:>10} {:>10} {:>5.2}x {:>9}",
            block_label(d.block_size),
            human(d.hole_bytes),
            human(d.zero_bytes),
            human(d.data_bytes),
            human(d.unique_bytes),
            d.dedup_ratio,
            speed(d.hash_mb_s)
        );
    }
    println!();
    println!(
        "{:>8} {:>8} {:>6} {:>10} {:>7} {:>7} {:>10} {:>10}",
        "block", "codec", "dedup", "stored", "compr", "total", "comp MB/s", "dec MB/s"
    );
    for row in &r.rows {
        println!(
            "{:>8} {:>8} {:>5.2}x {:>10} {:>6.2}x {:>6.2}x {:>10} {:>10}",
            block_label(row.block_size),
            row.codec,
            row.dedup_ratio,
            human(row.stored_bytes),
            row.compression_ratio,
            row.stored_ratio,
            // `none` does no work to compress; its measured speed is only the loop's.
            if row.algorithm == Algorithm::None {
                "-".to_string()
            } else {
                speed(row.compress_mb_s)
            },
            speed(row.decompress_mb_s)
        );
    }
    println!();
    println!(
        "dedup = data / unique bytes; compr = unique / stored; total = data / stored. \
         MB/s = 10^6 bytes of uncompressed data per second on one core."
    );
    if let Some(c) = &r.chart {
        println!("chart: {}", c.display());
    }
}

fn repo_cmd(ctx: &Context, a: RepoArgs) -> Result<()> {
    let size = parse_size(&a.size)?;
    if size < 1 << 20 {
        bail!("--size must be at least 1 MiB");
    }
    let opts = repo::Options {
        size,
        reads: a.reads,
        tmp_dir: a.tmp_dir.unwrap_or_else(std::env::temp_dir),
        drop_caches: !a.no_drop_caches,
    };
    let report = repo::run(ctx, &opts)?;
    if ctx.json {
        return print_json(&report);
    }
    print_repo(&report);
    Ok(())
}

fn print_repo(r: &Report) {
    let m = &r.image;
    println!(
        "repository {} (disk blocks {}, {}), scratch VM {}",
        r.repository.display(),
        block_label(u64::from(r.block_size)),
        r.compression,
        r.vm
    );
    println!(
        "image {}: {} holes, {} zeros, {} text, {} binary, {} random, {} repeated; stored as {}",
        human(m.size_bytes),
        human(m.hole_bytes),
        human(m.zero_bytes),
        human(m.text_bytes),
        human(m.binary_bytes),
        human(m.random_bytes),
        human(m.repeat_bytes),
        human(r.stored_bytes)
    );
    println!();
    println!(
        "{:<10} {:>9} {:>10} {:>14}  notes",
        "", "seconds", "MB/s", "written MB/s"
    );
    let cold = |d: bool| {
        if d {
            "caches dropped"
        } else {
            "page cache kept"
        }
    };
    println!(
        "{:<10} {:>9.2} {:>10} {:>14}  from the page cache",
        "ingest",
        r.ingest.seconds,
        speed(r.ingest.mb_s),
        speed(r.ingest.data_mb_s)
    );
    println!(
        "{:<10} {:>9.2} {:>10} {:>14}  {}, fsynced, {}",
        "restore",
        r.restore.seconds,
        speed(r.restore.mb_s),
        speed(r.restore.data_mb_s),
        cold(r.restore.caches_dropped),
        if r.restore_identical {
            "byte-identical"
        } else {
            "DIFFERENT"
        }
    );
    println!();
    println!(
        "{:<10} {:>7} {:>10} {:>10} {:>10}  notes",
        "4K reads", "count", "p50 µs", "p99 µs", "max µs"
    );
    for (name, l, note) in [
        (
            "cold",
            &r.cold_reads,
            format!("store reopened, {}", cold(r.cold_reads.caches_dropped)),
        ),
        ("warm", &r.warm_reads, "same offsets again".to_string()),
    ] {
        println!(
            "{:<10} {:>7} {:>10.1} {:>10.1} {:>10.1}  {}",
            name, l.count, l.p50_us, l.p99_us, l.max_us, note
        );
    }
    println!();
    println!(
        "deleted the scratch snapshot {}; `stasis gc` reclaims its {} (the empty VM {} stays listed)",
        r.snapshot_id,
        human(r.stored_bytes),
        r.vm
    );
}
