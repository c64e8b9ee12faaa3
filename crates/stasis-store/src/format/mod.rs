//! Every byte layout the store writes, in one area.
//!
//! Nothing outside `format` lays out or parses stored bytes; the rest of the crate
//! moves validated types ([`pack::PackEntry`], [`plan::Plan`], ...) to and from here.
//! Each parser is total: any input gives a value or an [`ErrorKind::Corrupt`] error
//! (with a bound on what a damaged length may make it allocate), never a panic, and
//! each has a fuzz target (`fuzz/fuzz_targets/`).
//!
//! - [`keys`]: which object holds what (`config`, `packs/`, `index/`, `gc/`,
//!   `quarantine/`).
//! - [`raw`]: the fixed `#[repr(C)]` little-endian headers, entries and trailers, sizes
//!   asserted at compile time, and the format version numbers.
//! - [`pack`]: a pack's header, entry table and trailer, and the validated entry.
//! - [`index_file`]: index files.
//! - [`plan`]: gc plans.
//! - [`refs`]: the reference table at the front of a frame whose members are stored
//!   XORed with a similar block.
//! - [`node`]: manifest tree nodes (postcard).
//! - [`codec`]: how one block or one shared frame is encoded (zstd, deltas, frames).
//! - [`config`]: the store's JSON configuration.
//!
//! Index files and gc plans are *sealed*: their last 32 bytes are the blake3 of all the
//! bytes before them ([`seal`], [`unseal`]); a pack's trailer carries the blake3 of its
//! entry table. Every such file is also named by the hash of its bytes, so a reader
//! can check a file against its name before it parses anything.
//!
//! [`ErrorKind::Corrupt`]: crate::ErrorKind::Corrupt

pub(crate) mod codec;
pub(crate) mod config;
pub(crate) mod index_file;
pub(crate) mod keys;
pub(crate) mod node;
pub(crate) mod pack;
pub(crate) mod plan;
pub(crate) mod raw;
pub(crate) mod refs;

use crate::error::{Error, Result};
use crate::id::Id;

/// Smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size, and so the largest blob any stored length may claim (a larger
/// one is damage, and would have a reader reserve up to 4 GiB for it).
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// Bytes of the checksum that ends a sealed file.
pub(crate) const CHECKSUM_LEN: usize = 32;

/// Seal `buf`: append the blake3 of its bytes.
pub(crate) fn seal(buf: &mut Vec<u8>) {
    let sum = *blake3::hash(buf).as_bytes();
    buf.extend_from_slice(&sum);
}

/// The body of the sealed file `bytes` (`what` names it in errors): at least
/// `min_body` bytes, and its checksum holds.
pub(crate) fn unseal<'a>(bytes: &'a [u8], min_body: usize, what: &str) -> Result<&'a [u8]> {
    if bytes.len() < min_body + CHECKSUM_LEN {
        return Err(Error::corrupt(format!("{what} is truncated")));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if !checksum_matches(body, sum) {
        return Err(Error::corrupt(format!("{what} checksum mismatch")));
    }
    Ok(body)
}

/// Whether `sum` is the blake3 of `bytes`.
pub(crate) fn checksum_matches(bytes: &[u8], sum: &[u8]) -> bool {
    blake3::hash(bytes).as_bytes()[..] == *sum
}

/// The blake3 of `bytes`, as stored in a pack trailer.
pub(crate) fn checksum(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The 32-byte ids laid end to end in `bytes` (a multiple of 32 long).
pub(crate) fn ids(bytes: &[u8]) -> Vec<Id> {
    bytes
        .chunks_exact(32)
        .map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            Id(a)
        })
        .collect()
}

/// A table of fixed records as one zstd frame (level 3: tables are small, and their
/// ids are random, so higher levels find nothing more). `None` if zstd fails (out of
/// memory, say): the writer then stores the table plain.
pub(crate) fn compress_table(table: &[u8]) -> Option<Vec<u8>> {
    zstd::bulk::compress(table, 3).ok()
}

/// Decode a compressed table that must come to exactly `len` bytes.
pub(crate) fn decompress_table(stored: &[u8], len: usize, what: &str) -> Result<Vec<u8>> {
    if len > raw::MAX_TABLE_BYTES {
        return Err(Error::corrupt(format!(
            "{what}: table of {len} bytes is too large"
        )));
    }
    let mut out = Vec::new();
    codec::decompress(codec::Codec::Zstd, stored, len, &mut out)
        .map_err(|e| e.context(what.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_detect_damage_and_truncation() {
        let mut buf = b"some body".to_vec();
        seal(&mut buf);
        assert_eq!(unseal(&buf, 4, "thing").expect("intact"), b"some body");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            let e = unseal(&bad, 4, "thing").expect_err("flip");
            assert_eq!(e.to_string(), "thing checksum mismatch");
        }
        let e = unseal(&buf[..38], 4, "thing").expect_err("short");
        assert_eq!(e.to_string(), "thing checksum mismatch");
        let e = unseal(&buf[..10], 4, "thing").expect_err("shorter");
        assert_eq!(e.to_string(), "thing is truncated");
    }
}
