//! The decoding floor: one image served through FUSE from compressed, checked blocks held
//! in memory, with the least work any server of compressed, checked data has to do.
//! Mounted exactly like a stasis mount (the same [`stasis_fuse::Tuning`] as `nullfs`).
//!
//! usage: decodefs MOUNTPOINT IMAGE [LEVEL]   (the file is MOUNTPOINT/file; LEVEL 1)
//!
//! At start it cuts IMAGE as a stasis repository stores it by default: 64 KiB blocks,
//! all-zero blocks left out, the data blocks of each aligned 256 KiB region compressed
//! together as one zstd frame at LEVEL, and each block's blake3 kept. A read decodes
//! the frames it covers straight into the reply buffer when no zero block sits
//! between their blocks, checks each block's blake3, and zero-fills the rest; a read
//! wholly in zeros replies from a static array. Nothing is looked up, cached, read
//! from disk or copied twice, so a cold read of the mount measures what decoding and
//! checking cost on top of the FUSE ceiling (`nullfs`); `stasis mount` does all of
//! this and more. Corrupt bytes would be an EIO, as in stasis.
//!
//! Serves until unmounted (`umount MOUNTPOINT`).

mod common;

use std::cell::RefCell;
use std::path::PathBuf;

use fuser::{Errno, ReplyData};

const BLOCK: usize = 64 << 10;
const FRAME: usize = 256 << 10;
const PER_FRAME: usize = FRAME / BLOCK;
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// One aligned 256 KiB region of the image.
#[derive(Debug, Default)]
struct Region {
    /// Which of its blocks hold data (bit i: block i), in order in the frame.
    data: u8,
    /// The zstd frame of its data blocks (empty when `data` is 0).
    frame: Vec<u8>,
    /// The blake3 of each data block, in frame order.
    ids: Vec<blake3::Hash>,
}

#[derive(Debug)]
struct DecodeFs {
    size: u64,
    regions: Vec<Region>,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn decode(frame: &[u8], dst: &mut [u8]) -> Result<(), Errno> {
    DCTX.with_borrow_mut(|d| {
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|_| Errno::EIO)?);
        }
        let d = d.as_mut().ok_or(Errno::EIO)?;
        match d.decompress_to_buffer(frame, dst) {
            Ok(n) if n == dst.len() => Ok(()),
            _ => Err(Errno::EIO),
        }
    })
}

impl DecodeFs {
    fn load(image: &std::path::Path, level: i32) -> std::io::Result<DecodeFs> {
        let bytes = std::fs::read(image)?;
        if bytes.len() % BLOCK != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the image's size is not a whole number of 64 KiB blocks",
            ));
        }
        let mut cctx = zstd::bulk::Compressor::new(level)?;
        let mut regions = Vec::with_capacity(bytes.len().div_ceil(FRAME));
        let mut plain = Vec::with_capacity(FRAME);
        for r in bytes.chunks(FRAME) {
            let mut region = Region::default();
            plain.clear();
            for (i, b) in r.chunks(BLOCK).enumerate() {
                if b.iter().any(|&x| x != 0) {
                    region.data |= 1 << i;
                    region.ids.push(blake3::hash(b));
                    plain.extend_from_slice(b);
                }
            }
            if region.data != 0 {
                region.frame = cctx.compress(&plain)?;
            }
            regions.push(region);
        }
        Ok(DecodeFs {
            size: bytes.len() as u64,
            regions,
        })
    }

    /// Fill `dst` with the image's bytes from `offset` on.
    fn fill(&self, offset: u64, dst: &mut [u8]) -> Result<(), Errno> {
        let mut at = 0usize;
        while at < dst.len() {
            let pos = offset as usize + at;
            let region = &self.regions[pos / FRAME];
            let within = pos % FRAME;
            let take = (FRAME - within).min(dst.len() - at);
            let out = &mut dst[at..at + take];
            if region.data == 0 {
                out.fill(0);
            } else {
                let count = region.data.count_ones() as usize;
                let first = region.data.trailing_zeros() as usize;
                let contiguous = region.data >> first == (1u8 << count) - 1;
                let plain_len = count * BLOCK;
                if contiguous && within == 0 && take >= (first + count) * BLOCK {
                    // Decode in place; zero what lies around.
                    let lo = first * BLOCK;
                    out[..lo].fill(0);
                    out[lo + plain_len..].fill(0);
                    let place = &mut out[lo..lo + plain_len];
                    decode(&region.frame, place)?;
                    check(&region.ids, place)?;
                } else {
                    SCRATCH.with_borrow_mut(|s| -> Result<(), Errno> {
                        s.resize(plain_len, 0);
                        decode(&region.frame, s)?;
                        check(&region.ids, s)?;
                        for i in 0..PER_FRAME {
                            let a = (i * BLOCK).max(within);
                            let b = ((i + 1) * BLOCK).min(within + take);
                            if a >= b {
                                continue;
                            }
                            let o = &mut out[a - within..b - within];
                            if region.data & (1 << i) == 0 {
                                o.fill(0);
                                continue;
                            }
                            // Its place in the frame: after the data blocks before it.
                            let k = (region.data & ((1u8 << i) - 1)).count_ones() as usize;
                            o.copy_from_slice(&s[k * BLOCK + a - i * BLOCK..][..b - a]);
                        }
                        Ok(())
                    })?;
                }
            }
            at += take;
        }
        Ok(())
    }
}

/// Check the blake3 of each block of `plain` against `ids`.
fn check(ids: &[blake3::Hash], plain: &[u8]) -> Result<(), Errno> {
    for (id, b) in ids.iter().zip(plain.chunks(BLOCK)) {
        if blake3::hash(b) != *id {
            return Err(Errno::EIO);
        }
    }
    Ok(())
}

impl common::Source for DecodeFs {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, size: u32, reply: ReplyData) {
        let len = u64::from(size).min(self.size.saturating_sub(offset)) as usize;
        if len == 0 {
            return reply.data(&[]);
        }
        let (first, last) = (
            offset as usize / FRAME,
            (offset as usize + len).div_ceil(FRAME),
        );
        if len <= ZEROS.len() && self.regions[first..last].iter().all(|r| r.data == 0) {
            return reply.data(&ZEROS[..len]);
        }
        BUF.with_borrow_mut(|buf| {
            buf.resize(len, 0);
            match self.fill(offset, buf) {
                Ok(()) => reply.data(buf),
                Err(e) => reply.error(e),
            }
        });
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(point), Some(image)) = (args.next(), args.next()) else {
        eprintln!("usage: decodefs MOUNTPOINT IMAGE [LEVEL]");
        return std::process::ExitCode::FAILURE;
    };
    let level = match args.next().map(|s| s.to_string_lossy().parse::<i32>()) {
        None => 1,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("decodefs: LEVEL: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Some(tuning) = common::tuning("decodefs") else {
        return std::process::ExitCode::FAILURE;
    };
    let fs = match DecodeFs::load(image.as_ref(), level) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("decodefs: {}: {e}", PathBuf::from(&image).display());
            return std::process::ExitCode::FAILURE;
        }
    };
    let stored: usize = fs.regions.iter().map(|r| r.frame.len()).sum();
    eprintln!(
        "decodefs: {} bytes, {} frames, {stored} bytes compressed; serving",
        fs.size,
        fs.regions.iter().filter(|r| r.data != 0).count()
    );
    common::serve("decodefs", fs, tuning, &PathBuf::from(point))
}
