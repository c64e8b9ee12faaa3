//! Read timings for `tools/bench-mount.sh` (any file, FUSE or not).
//!
//! ```text
//! readbench seq FILE                       read(2) through FILE in 1 MiB calls
//!     -> "seq bytes=N secs=S"
//! readbench rand FILE SOURCE COUNT SEED [noverify]
//!                                          COUNT preads of 4 KiB, each timed
//!     -> "rand n=N p50_us=.. p99_us=.. mean_us=.. max_us=.."
//! ```
//!
//! `rand` draws its offsets from SOURCE (the original image on a local disk): 4 KiB
//! aligned, inside SOURCE's data regions (SEEK_DATA/SEEK_HOLE; reads of holes say little),
//! one per distinct 4 MiB region while there are enough regions, so that a pass is not
//! served from chunks an earlier read of the same pass brought in. The same SEED gives the
//! same offsets. After timing, every block read is compared with SOURCE's bytes at the
//! same offset; any difference is an error (exit status 1). `noverify` skips that, for a
//! FILE that holds other bytes (the ceiling's).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Instant;

const PAGE: u64 = 4096;
const REGION: u64 = 4 << 20;

fn data_ranges(f: &File) -> std::io::Result<Vec<(u64, u64)>> {
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut off = 0i64;
    while (off as u64) < size {
        // SAFETY: lseek on an open descriptor.
        let d = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if d < 0 {
            break; // ENXIO: no data after `off`
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { size as i64 } else { h };
        out.push((d as u64, h as u64));
        off = h;
    }
    Ok(out)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// COUNT 4 KiB-aligned offsets in SOURCE's data, distinct 4 MiB regions first.
fn offsets(ranges: &[(u64, u64)], count: usize, seed: u64) -> Vec<u64> {
    // Each region's pages with data, as (first page offset, pages) runs.
    let mut regions: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut region_of: Vec<u64> = Vec::new();
    for &(a, b) in ranges {
        let (mut a, b) = (a.div_ceil(PAGE) * PAGE, b / PAGE * PAGE);
        while a < b {
            let r = a / REGION;
            let end = b.min((r + 1) * REGION);
            if region_of.last() != Some(&r) {
                region_of.push(r);
                regions.push(Vec::new());
            }
            if let Some(v) = regions.last_mut() {
                v.push((a, (end - a) / PAGE));
            }
            a = end;
        }
    }
    let mut rng = Rng(seed | 1);
    let mut order: Vec<usize> = (0..regions.len()).collect();
    let mut out = Vec::with_capacity(count);
    while out.len() < count && !order.is_empty() {
        // A fresh shuffle of the regions per round.
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for &r in &order {
            if out.len() == count {
                break;
            }
            let runs = &regions[r];
            let pages: u64 = runs.iter().map(|x| x.1).sum();
            let mut k = rng.next() % pages;
            for &(start, n) in runs {
                if k < n {
                    out.push(start + k * PAGE);
                    break;
                }
                k -= n;
            }
        }
    }
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(args: &[String]) -> Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
    match args {
        [mode, file] if mode == "seq" => {
            let mut f = File::open(file).map_err(|e| err(file, e))?;
            let mut buf = vec![0u8; 1 << 20];
            let t0 = Instant::now();
            let mut total = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(|e| err(file, e))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let secs = t0.elapsed().as_secs_f64();
            println!("seq bytes={total} secs={secs:.4}");
            Ok(())
        }
        [mode, file, source, count, seed, rest @ ..]
            if mode == "rand" && matches!(rest, [] | [_]) =>
        {
            let verify = match rest {
                [] => true,
                [x] if x == "noverify" => false,
                _ => return Err(format!("unknown argument {rest:?}")),
            };
            let count: usize = count.parse().map_err(|_| "COUNT: not a number")?;
            let seed: u64 = seed.parse().map_err(|_| "SEED: not a number")?;
            let src = File::open(source).map_err(|e| err(source, e))?;
            let offs = offsets(&data_ranges(&src).map_err(|e| err(source, e))?, count, seed);
            if offs.is_empty() {
                return Err(format!("{source} has no data"));
            }
            let f = File::open(file).map_err(|e| err(file, e))?;
            let mut got = vec![0u8; offs.len() * PAGE as usize];
            let mut lat = Vec::with_capacity(offs.len());
            for (i, &o) in offs.iter().enumerate() {
                let dst = &mut got[i * PAGE as usize..(i + 1) * PAGE as usize];
                let t0 = Instant::now();
                f.read_exact_at(dst, o).map_err(|e| err(file, e))?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            let mut want = vec![0u8; PAGE as usize];
            for (i, &o) in offs.iter().enumerate().filter(|_| verify) {
                src.read_exact_at(&mut want, o)
                    .map_err(|e| err(source, e))?;
                if got[i * PAGE as usize..(i + 1) * PAGE as usize] != want[..] {
                    return Err(format!("{file}: the 4 KiB at {o} differ from {source}"));
                }
            }
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            lat.sort_by(f64::total_cmp);
            println!(
                "rand n={} p50_us={:.1} p99_us={:.1} mean_us={:.1} max_us={:.1}",
                lat.len(),
                pct(&lat, 0.50),
                pct(&lat, 0.99),
                mean,
                lat[lat.len() - 1]
            );
            Ok(())
        }
        _ => Err(
            "usage: readbench seq FILE | readbench rand FILE SOURCE COUNT SEED [noverify]".into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readbench: {e}");
            ExitCode::FAILURE
        }
    }
}
