//! The synthetic disk image `bench repo` stores: a deterministic mix of what VM images
//! hold, in 1 MiB extents.
//!
//! Each extent is, by a seeded draw: a hole (never written, 15%), written zeros (10%),
//! text-like data (words and numbers in config-file lines; compresses well, 25%),
//! binary-like data (records of recurring 16-byte patterns, counters and noise;
//! compresses partly, 25%), random bytes (incompressible, 15%) or a repeat of an
//! earlier data extent (dedups, 10%). The same size always gives the same bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context as _, Result};
use indicatif::ProgressBar;
use serde::Serialize;

/// Extent size: the unit of the mix (a multiple of every block size up to 1 MiB, so
/// repeats dedup at those sizes).
pub const EXTENT: u64 = 1 << 20;
const SEED: u64 = 0x5eed_57a5_15be_7c40;

/// What one extent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Never written.
    Hole,
    /// Written zeros.
    Zero,
    /// Text-like.
    Text,
    /// Binary-like.
    Binary,
    /// Random.
    Random,
    /// A copy of extent `n` (a data extent before it).
    Repeat(u64),
}

/// Bytes of each kind in an image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Logical size.
    pub size_bytes: u64,
    /// Never written.
    pub hole_bytes: u64,
    /// Written zeros.
    pub zero_bytes: u64,
    /// Text-like.
    pub text_bytes: u64,
    /// Binary-like.
    pub binary_bytes: u64,
    /// Random.
    pub random_bytes: u64,
    /// Copies of earlier extents.
    pub repeat_bytes: u64,
}

impl Mix {
    /// Written bytes (everything but holes).
    pub fn written_bytes(&self) -> u64 {
        self.size_bytes - self.hole_bytes
    }
}

/// The kind of each extent of an image of `size` bytes.
pub fn plan(size: u64) -> Vec<Kind> {
    let n = size.div_ceil(EXTENT);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut data: Vec<u64> = Vec::new();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = match rng.u32(0..100) {
            0..15 => Kind::Hole,
            15..25 => Kind::Zero,
            25..50 => Kind::Text,
            50..75 => Kind::Binary,
            75..90 => Kind::Random,
            _ => match data.len() {
                0 => Kind::Random,
                len => Kind::Repeat(data[rng.usize(0..len)]),
            },
        };
        if matches!(k, Kind::Text | Kind::Binary | Kind::Random) {
            data.push(i);
        }
        out.push(k);
    }
    out
}

const WORDS: [&str; 32] = [
    "the", "server", "config", "enabled", "false", "true", "path", "/usr/lib", "timeout", "retry",
    "level", "debug", "info", "warning", "error", "user", "group", "root", "listen", "port",
    "address", "cache", "size", "max", "min", "interval", "seconds", "log", "file", "module",
    "service", "network",
];

/// Fill `buf` with text-like bytes: lines of `key_N = words and numbers`.
fn text(rng: &mut fastrand::Rng, buf: &mut [u8]) {
    let mut s: Vec<u8> = Vec::with_capacity(buf.len() + 128);
    while s.len() < buf.len() {
        s.extend_from_slice(format!("key_{} =", rng.u32(0..500)).as_bytes());
        for _ in 0..rng.usize(2..9) {
            s.extend_from_slice(b" ");
            if rng.u8(0..5) == 0 {
                s.extend_from_slice(rng.u32(0..100_000).to_string().as_bytes());
            } else {
                s.extend_from_slice(WORDS[rng.usize(0..WORDS.len())].as_bytes());
            }
        }
        s.push(b'\n');
    }
    buf.copy_from_slice(&s[..buf.len()]);
}

/// Fill `buf` with binary-like bytes: 64-byte records of two patterns from a small
/// table (one with a byte changed), a counter and 8 random bytes.
fn binary(rng: &mut fastrand::Rng, table: &[[u8; 16]], buf: &mut [u8]) {
    let mut counter = rng.u64(..);
    for rec in buf.chunks_mut(64) {
        let mut r = [0u8; 64];
        r[..16].copy_from_slice(&table[rng.usize(0..table.len())]);
        r[16..24].copy_from_slice(&counter.to_le_bytes());
        rng.fill(&mut r[24..32]);
        r[32..48].copy_from_slice(&table[rng.usize(0..table.len())]);
        r[32 + rng.usize(0..16)] = rng.u8(..);
        r[48..64].copy_from_slice(&table[rng.usize(0..table.len())]);
        counter = counter.wrapping_add(1);
        rec.copy_from_slice(&r[..rec.len()]);
    }
}

/// The bytes of data extent `i` of kind `k` (its own seed, so a repeat regenerates
/// them instead of keeping them).
fn extent(k: Kind, i: u64, table: &[[u8; 16]], buf: &mut [u8]) {
    let mut rng = fastrand::Rng::with_seed(SEED ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    match k {
        Kind::Hole | Kind::Zero | Kind::Repeat(_) => buf.fill(0),
        Kind::Text => text(&mut rng, buf),
        Kind::Binary => binary(&mut rng, table, buf),
        Kind::Random => rng.fill(buf),
    }
}

/// Write an image of `size` bytes to `path` (holes left unwritten); returns its mix.
pub fn write(path: &Path, size: u64, pb: &ProgressBar) -> Result<Mix> {
    let kinds = plan(size);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let table: Vec<[u8; 16]> = (0..64)
        .map(|_| {
            let mut p = [0u8; 16];
            rng.fill(&mut p);
            p
        })
        .collect();
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("cannot size {}", path.display()))?;
    let mut mix = Mix {
        size_bytes: size,
        ..Mix::default()
    };
    let mut buf = vec![0u8; EXTENT as usize];
    for (i, &k) in kinds.iter().enumerate() {
        let i = i as u64;
        let off = i * EXTENT;
        let len = EXTENT.min(size - off);
        let counter = match k {
            Kind::Hole => &mut mix.hole_bytes,
            Kind::Zero => &mut mix.zero_bytes,
            Kind::Text => &mut mix.text_bytes,
            Kind::Binary => &mut mix.binary_bytes,
            Kind::Random => &mut mix.random_bytes,
            Kind::Repeat(_) => &mut mix.repeat_bytes,
        };
        *counter += len;
        if k != Kind::Hole {
            let b = &mut buf[..len as usize];
            match k {
                Kind::Repeat(j) => {
                    let src = kinds.get(j as usize).copied().unwrap_or(Kind::Zero);
                    extent(src, j, &table, b);
                }
                _ => extent(k, i, &table, b),
            }
            file.write_all_at(b, off)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        pb.inc(len);
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_deterministic_and_mixed() {
        let a = plan(256 * EXTENT);
        assert_eq!(a, plan(256 * EXTENT));
        assert_eq!(plan(10 * EXTENT + 1).len(), 11);
        for want in [
            Kind::Hole,
            Kind::Zero,
            Kind::Text,
            Kind::Binary,
            Kind::Random,
        ] {
            assert!(a.contains(&want), "{want:?} missing");
        }
        // Repeats always copy an earlier data extent.
        for (i, k) in a.iter().enumerate() {
            if let Kind::Repeat(j) = *k {
                assert!((j as usize) < i);
                assert!(matches!(
                    a[j as usize],
                    Kind::Text | Kind::Binary | Kind::Random
                ));
            }
        }
    }

    #[test]
    fn repeats_are_byte_identical_and_kinds_differ() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("img");
        let size = 64 * EXTENT + 12345;
        let mix = write(&p, size, &ProgressBar::hidden()).expect("write");
        assert_eq!(mix.size_bytes, size);
        assert_eq!(
            mix.hole_bytes
                + mix.zero_bytes
                + mix.text_bytes
                + mix.binary_bytes
                + mix.random_bytes
                + mix.repeat_bytes,
            size
        );
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(bytes.len() as u64, size);
        let ext = |i: u64| &bytes[(i * EXTENT) as usize..((i + 1) * EXTENT).min(size) as usize];
        let kinds = plan(size);
        let mut repeats = 0;
        for (i, k) in kinds.iter().enumerate() {
            match *k {
                Kind::Repeat(j) if (i as u64 + 1) * EXTENT <= size => {
                    assert_eq!(ext(i as u64), ext(j));
                    repeats += 1;
                }
                Kind::Hole | Kind::Zero => assert!(ext(i as u64).iter().all(|&b| b == 0)),
                Kind::Text => assert!(ext(i as u64).is_ascii()),
                _ => {}
            }
        }
        assert!(repeats > 0);
    }
}
