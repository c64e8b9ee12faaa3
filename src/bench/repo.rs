//! `bench repo`: ingest, restore and random reads end to end on a repository.
//!
//! A synthetic image ([`super::image`]) is written to a temporary directory and stored
//! as the only snapshot of a new scratch VM (`bench-<random>`) through `stasis
//! create`'s own code. It is then restored to a temporary file through the code of
//! `stasis restore` (plus an fsync) and compared byte for byte, and read at random 4 KiB
//! offsets inside its data through the store's [`PayloadReader`]: cold (the store
//! reopened, so its block cache is empty, and, as root, the page cache dropped) and
//! warm (the same offsets again). Finally the scratch snapshot is deleted. Its blocks
//! stay in packs until `stasis gc`: gc works on the whole repository, and a benchmark
//! should not decide to reclaim other snapshots' garbage.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use stasis_catalog::{NewSnapshot, Snapshot};
use stasis_repo::create::{self, Format, Progress};
use stasis_store::{PayloadReader, Role, Store};

use super::codecs::mb_per_s;
use super::image::{self, Mix};
use super::progress;
use crate::repo::{Context, actor};

/// Size of each random read.
pub const READ_SIZE: usize = 4096;

/// What `bench repo` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// Image size.
    pub size: u64,
    /// Random reads per pass.
    pub reads: usize,
    /// Where the image and the restored copy go.
    pub tmp_dir: PathBuf,
    /// Drop the page cache before cold passes (only possible as root).
    pub drop_caches: bool,
}

/// A timed pass over the image.
#[derive(Clone, Debug, Serialize)]
pub struct Pass {
    /// Logical bytes (the image's size).
    pub bytes: u64,
    /// Written bytes (the image less its holes).
    pub data_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Logical MB/s (10^6 B/s).
    pub mb_s: Option<f64>,
    /// Written-data MB/s.
    pub data_mb_s: Option<f64>,
    /// Whether the page cache was dropped before it.
    pub caches_dropped: bool,
}

impl Pass {
    fn new(mix: &Mix, t: Duration, caches_dropped: bool) -> Pass {
        Pass {
            bytes: mix.size_bytes,
            data_bytes: mix.written_bytes(),
            seconds: t.as_secs_f64(),
            mb_s: mb_per_s(mix.size_bytes, t),
            data_mb_s: mb_per_s(mix.written_bytes(), t),
            caches_dropped,
        }
    }
}

/// Latency percentiles of one pass of random reads, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Reads timed.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Whether the page cache was dropped before it.
    pub caches_dropped: bool,
}

/// Nearest-rank percentile `p` (0-100) of sorted `v`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Latency {
    fn of(mut t: Vec<Duration>, caches_dropped: bool) -> Latency {
        t.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let total: Duration = t.iter().sum();
        Latency {
            count: t.len(),
            p50_us: us(percentile(&t, 50.0)),
            p99_us: us(percentile(&t, 99.0)),
            max_us: us(t.last().copied().unwrap_or_default()),
            mean_us: if t.is_empty() {
                0.0
            } else {
                us(total) / t.len() as f64
            },
            caches_dropped,
        }
    }
}

/// Everything `bench repo` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The repository.
    pub repository: PathBuf,
    /// The scratch VM.
    pub vm: String,
    /// The scratch snapshot (deleted at the end).
    pub snapshot_id: String,
    /// The repository's disk block size.
    pub block_size: u32,
    /// The compression the snapshot was stored with.
    pub compression: String,
    /// The image.
    pub image: Mix,
    /// Bytes the snapshot added to the repository (blocks and tree nodes).
    pub stored_bytes: u64,
    /// `stasis create` of the image (from the page cache: it was just written).
    pub ingest: Pass,
    /// Restore to a file, fsynced.
    pub restore: Pass,
    /// The restored file equals the image.
    pub restore_identical: bool,
    /// Bytes per random read.
    pub read_bytes: usize,
    /// Random reads with the store just reopened.
    pub cold_reads: Latency,
    /// The same reads again.
    pub warm_reads: Latency,
    /// The scratch snapshot was deleted.
    pub deleted: bool,
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches` when asked and running as root; whether
/// the caches were dropped.
fn drop_caches(wanted: bool) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if !wanted || unsafe { libc::geteuid() } != 0 {
        return false;
    }
    // SAFETY: sync has no preconditions and cannot fail.
    unsafe { libc::sync() };
    match OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .and_then(|mut f| f.write_all(b"3\n"))
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot drop the page cache: {e}");
            false
        }
    }
}

/// Whether two files hold the same bytes.
fn identical(a: &Path, b: &Path) -> Result<bool> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        return Ok(false);
    }
    let mut ba = vec![0u8; 8 << 20];
    let mut bb = vec![0u8; 8 << 20];
    let mut off = 0u64;
    while off < la {
        let n = (la - off).min(ba.len() as u64) as usize;
        fa.read_exact_at(&mut ba[..n], off)?;
        fb.read_exact_at(&mut bb[..n], off)?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// `count` 4 KiB-aligned offsets inside `ranges`, uniformly over their pages, the same
/// for the same inputs.
pub fn read_offsets(ranges: &[std::ops::Range<u64>], count: usize) -> Vec<u64> {
    let pages: Vec<(u64, u64)> = ranges
        .iter()
        .map(|r| {
            let first = r.start.div_ceil(READ_SIZE as u64);
            let end = r.end / READ_SIZE as u64;
            (first, end.saturating_sub(first))
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    let total: u64 = pages.iter().map(|p| p.1).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut rng = fastrand::Rng::with_seed(0xbe7c_4a11);
    (0..count)
        .map(|_| {
            let mut k = rng.u64(0..total);
            for &(first, n) in &pages {
                if k < n {
                    return (first + k) * READ_SIZE as u64;
                }
                k -= n;
            }
            0
        })
        .collect()
}

/// Time `offsets` read through a fresh reader of `snap`'s payload, checking each
/// against the image.
fn read_pass(
    reader: &PayloadReader<&Store>,
    offsets: &[u64],
    image: &File,
    caches_dropped: bool,
    pb: &indicatif::ProgressBar,
) -> Result<Latency> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut want = vec![0u8; READ_SIZE];
    let mut times = Vec::with_capacity(offsets.len());
    for &off in offsets {
        let t = Instant::now();
        let n = reader.read_at(off, &mut buf)?;
        times.push(t.elapsed());
        image
            .read_exact_at(&mut want[..n], off)
            .context("reading the image")?;
        if n != READ_SIZE || buf[..n] != want[..n] {
            bail!("the stored snapshot read back different bytes at offset {off}");
        }
        pb.inc(1);
    }
    Ok(Latency::of(times, caches_dropped))
}

/// Run the benchmark.
pub fn run(ctx: &Context, opts: &Options) -> Result<Report> {
    let tmp = tempfile::Builder::new()
        .prefix("stasis-bench-")
        .tempdir_in(&opts.tmp_dir)
        .with_context(|| format!("cannot make a directory in {}", opts.tmp_dir.display()))?;
    let img = tmp.path().join("disk.img");
    let pb = progress(ctx.json, opts.size, true);
    pb.set_message("writing the image");
    let mix = image::write(&img, opts.size, &pb)?;
    pb.finish_and_clear();

    let vm = format!("bench-{}", stasis_store::random_hex(4));
    let mut repo = ctx.open()?;
    let new = NewSnapshot {
        created_by: actor(),
        description: Some("scratch snapshot of `stasis bench repo` (deleted when it ends)".into()),
        datastore: Some(repo.config().dir.display().to_string()),
        ..NewSnapshot::new(vm.clone(), "bench", String::new(), Vec::new())
    };
    let req = create::Request {
        new,
        parent: None,
        diff: false,
        compression: None,
        inputs: vec![create::Input::new(
            Role::Disk,
            Some("disk"),
            &img,
            Format::Raw,
        )?],
        before_record: None,
    };
    let pb = progress(ctx.json, 0, true);
    pb.set_message("ingesting");
    let advance = |p: Progress| match p {
        Progress::Total(n) => pb.set_length(n),
        Progress::Advanced(n) => pb.inc(n),
    };
    let t = Instant::now();
    let created = repo.create(req, &advance)?;
    let ingest_t = t.elapsed();
    pb.finish_and_clear();
    drop(repo);
    let snap = created.snapshot;

    let measured = measure(ctx, opts, &snap, &mix, ingest_t, tmp.path(), &img);
    // The scratch snapshot goes whether or not the measurements worked.
    let deleted = delete(ctx, &snap);
    let mut report = measured?;
    deleted.with_context(|| format!("deleting the scratch snapshot {}", snap.id))?;
    report.deleted = true;
    report.vm = vm;
    Ok(report)
}

fn measure(
    ctx: &Context,
    opts: &Options,
    snap: &Snapshot,
    mix: &Mix,
    ingest_t: Duration,
    tmp: &Path,
    img: &Path,
) -> Result<Report> {
    let payload = snap
        .payloads
        .first()
        .context("the scratch snapshot has no payload")?;

    // Restore, cold.
    let dropped = drop_caches(opts.drop_caches);
    let repo = ctx.open()?;
    let out_path = tmp.join("restored.img");
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let pb = progress(ctx.json, payload.data_bytes, true);
    pb.set_message("restoring");
    let t = Instant::now();
    PayloadReader::new(repo.store(), payload.manifest)?.restore(&out, &|n| pb.inc(n))?;
    out.sync_all().context("syncing the restored file")?;
    let restore_t = t.elapsed();
    pb.finish_and_clear();
    drop(out);
    let restore_identical = identical(img, &out_path).context("comparing the restored file")?;
    std::fs::remove_file(&out_path).ok();
    drop(repo);

    // Random reads: cold (store reopened, caches dropped), then warm.
    let dropped_reads = drop_caches(opts.drop_caches);
    let repo = ctx.open()?;
    let reader = PayloadReader::new(repo.store(), payload.manifest)?;
    let offsets = read_offsets(reader.data_ranges()?, opts.reads);
    let image = File::open(img).context("opening the image")?;
    let pb = progress(ctx.json, 2 * offsets.len() as u64, false);
    pb.set_message("random 4 KiB reads");
    let cold = read_pass(&reader, &offsets, &image, dropped_reads, &pb)?;
    let warm = read_pass(&reader, &offsets, &image, false, &pb)?;
    pb.finish_and_clear();

    Ok(Report {
        repository: repo.config().dir.clone(),
        vm: snap.source_instance_name.clone(),
        snapshot_id: snap.id.clone(),
        block_size: payload.manifest.block_size,
        compression: repo.store().config().compression.to_string(),
        image: mix.clone(),
        stored_bytes: snap.added_bytes,
        ingest: Pass::new(mix, ingest_t, false),
        restore: Pass::new(mix, restore_t, dropped),
        restore_identical,
        read_bytes: READ_SIZE,
        cold_reads: cold,
        warm_reads: warm,
        deleted: false,
    })
}

fn delete(ctx: &Context, snap: &Snapshot) -> Result<()> {
    let mut repo = ctx.open()?;
    repo.delete(&snap.id, false, &actor())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_micros(100));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn read_offsets_stay_inside_the_data() {
        let ranges = [4096..3 * 4096, 100 * 4096..100 * 4096 + 10];
        let offs = read_offsets(&ranges, 500);
        assert_eq!(offs.len(), 500);
        for o in &offs {
            assert!(*o == 4096 || *o == 2 * 4096, "{o}");
        }
        assert_eq!(offs, read_offsets(&ranges, 500));
        let short = 0..100;
        assert!(read_offsets(&[short], 5).is_empty());
    }
}
