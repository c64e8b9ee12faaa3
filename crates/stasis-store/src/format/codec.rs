//! Per-block compression: none, zstd (levels 1-19) or lz4 (levels 0-9).
//!
//! lz4 level 0 is lz4_flex's fast block mode; levels 1-9 use liblz4's HC mode (levels
//! 4-12), which trades compression speed for size. All lz4 output is the plain lz4 block
//! format, so one decoder (lz4_flex) reads every level. A block whose compressed form is
//! not smaller than the block itself is stored raw ([`Codec::Raw`]).

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zstd::zstd_safe::ResetDirective;

use crate::error::{Error, ErrorKind, Result};

/// A compression algorithm a user can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Store blocks as they are.
    None,
    /// zstd, levels 1-19.
    Zstd,
    /// lz4, levels 0-9 (0 is the fast mode, 1-9 high compression).
    Lz4,
}

impl Algorithm {
    /// The level used when none is given.
    pub fn default_level(self) -> i32 {
        match self {
            Algorithm::None => 0,
            Algorithm::Zstd => 1,
            Algorithm::Lz4 => 0,
        }
    }

    /// The accepted level range.
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Algorithm::None => 0..=0,
            Algorithm::Zstd => 1..=19,
            Algorithm::Lz4 => 0..=9,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::None => "none",
            Algorithm::Zstd => "zstd",
            Algorithm::Lz4 => "lz4",
        }
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(Algorithm::None),
            "zstd" => Ok(Algorithm::Zstd),
            "lz4" => Ok(Algorithm::Lz4),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown compression {s:?} (expected zstd, lz4 or none)"),
            )),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated compression setting: an algorithm and a level in its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompressionRecord", into = "CompressionRecord")]
pub struct Compression {
    algorithm: Algorithm,
    level: i32,
}

#[derive(Serialize, Deserialize)]
struct CompressionRecord {
    algorithm: Algorithm,
    level: i32,
}

impl TryFrom<CompressionRecord> for Compression {
    type Error = Error;
    fn try_from(r: CompressionRecord) -> Result<Self> {
        Compression::new(r.algorithm, Some(r.level))
    }
}

impl From<Compression> for CompressionRecord {
    fn from(c: Compression) -> Self {
        CompressionRecord {
            algorithm: c.algorithm,
            level: c.level,
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithm: Algorithm::Zstd,
            level: 1,
        }
    }
}

impl Compression {
    /// `algorithm` at `level` (its default level when `None`); errors outside the range.
    pub fn new(algorithm: Algorithm, level: Option<i32>) -> Result<Self> {
        let level = level.unwrap_or(algorithm.default_level());
        if !algorithm.levels().contains(&level) {
            let r = algorithm.levels();
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{algorithm} level {level} is out of range ({}..={})",
                    r.start(),
                    r.end()
                ),
            ));
        }
        Ok(Compression { algorithm, level })
    }

    /// No compression.
    pub fn none() -> Self {
        Compression {
            algorithm: Algorithm::None,
            level: 0,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The level.
    pub fn level(&self) -> i32 {
        self.level
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.algorithm {
            Algorithm::None => f.write_str("none"),
            a => write!(f, "{a}-{}", self.level),
        }
    }
}

/// How one stored block is encoded (a byte in pack and index entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Stored as it is.
    Raw = 0,
    /// A zstd frame.
    Zstd = 1,
    /// An lz4 block (no size prefix; the raw length is kept beside it).
    Lz4 = 2,
    /// One zstd frame holding several blobs back to back (see [`MAX_FRAME_BYTES`]):
    /// each member's entry names the same stored range and where in the decoded bytes
    /// its own bytes start. Neighbouring blocks compress better together than alone.
    ZstdFrame = 3,
    /// A delta: one block compressed by zstd against another stored block, its *base*,
    /// whose bytes serve as the frame's raw-content prefix. The stored bytes are the
    /// base's 32-byte id, then the zstd frame (`split_delta`). A base is never itself
    /// a delta, so a read decodes at most two blocks. Used where a block has a close
    /// predecessor: a guest memory page that changed between two snapshots of one VM.
    ZstdDelta = 4,
    /// A member of a shared frame that carries a reference table (see
    /// `crate::frame::split_refs`), stored as it is: read like [`Codec::ZstdFrame`],
    /// past the table.
    ZstdFrameRefs = 5,
    /// A member of a shared frame with a reference table whose bytes in the decoded
    /// frame are its XOR with another stored block, its *reference*, named in the
    /// table. Used for a guest memory page that differs in a few words from a page
    /// stored earlier anywhere in the repository (see `crate::similarity`). Like a
    /// delta's base, a reference is a whole block, so a read decodes at most two.
    ZstdFrameXor = 6,
}

/// The most bytes a shared frame may decode to (a bound on what a damaged or hostile
/// frame header can make a reader allocate).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

impl Codec {
    /// The codec named by an on-disk byte.
    pub fn from_u8(b: u8) -> Result<Codec> {
        match b {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Zstd),
            2 => Ok(Codec::Lz4),
            3 => Ok(Codec::ZstdFrame),
            4 => Ok(Codec::ZstdDelta),
            5 => Ok(Codec::ZstdFrameRefs),
            6 => Ok(Codec::ZstdFrameXor),
            _ => Err(Error::corrupt(format!("unknown block codec {b}"))),
        }
    }

    /// Whether a blob of this codec is a member of a shared frame (its entry names the
    /// frame's stored range and a skip into the decoded frame).
    pub fn in_frame(self) -> bool {
        matches!(
            self,
            Codec::ZstdFrame | Codec::ZstdFrameRefs | Codec::ZstdFrameXor
        )
    }

    /// Whether a blob of this codec is read through another block (a delta's base, an
    /// XOR member's reference). Such a blob is never itself a base or reference.
    pub fn has_base(self) -> bool {
        matches!(self, Codec::ZstdDelta | Codec::ZstdFrameXor)
    }
}

thread_local! {
    static ZSTD_C: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(level: i32, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    ZSTD_C.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let c = zstd::bulk::Compressor::new(level)
                .map_err(|e| Error::new(ErrorKind::Io, format!("zstd init: {e}")))?;
            *slot = Some((level, c));
        }
        let Some((_, c)) = slot.as_mut() else {
            return Err(Error::new(ErrorKind::Io, "zstd compressor missing"));
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, out)
            .map_err(|e| Error::new(ErrorKind::Io, format!("zstd compress: {e}")))?;
        Ok(())
    })
}

/// Compress `data` with `c` into `out`. Returns the codec used: [`Codec::Raw`] (and `out`
/// left empty) when compression is off or did not make the block smaller.
pub fn compress(c: Compression, data: &[u8], out: &mut Vec<u8>) -> Result<Codec> {
    out.clear();
    // Nothing to shrink, and liblz4's optimal HC parser (lz4 levels 7-9 here) reads
    // through the source pointer of an empty input and crashes.
    if data.is_empty() {
        return Ok(Codec::Raw);
    }
    let codec = match c.algorithm {
        Algorithm::None => return Ok(Codec::Raw),
        Algorithm::Zstd => {
            zstd_compress(c.level, data, out)?;
            Codec::Zstd
        }
        Algorithm::Lz4 => {
            if c.level == 0 {
                out.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
                let n = lz4_flex::block::compress_into(data, out)
                    .map_err(|e| Error::new(ErrorKind::Io, format!("lz4 compress: {e}")))?;
                out.truncate(n);
            } else {
                let bound = lz4::block::compress_bound(data.len())
                    .map_err(|e| Error::new(ErrorKind::Io, format!("lz4 bound: {e}")))?;
                out.resize(bound, 0);
                let mode = lz4::block::CompressionMode::HIGHCOMPRESSION(c.level + 3);
                let n = lz4::block::compress_to_buffer(data, Some(mode), false, out)
                    .map_err(|e| Error::new(ErrorKind::Io, format!("lz4hc compress: {e}")))?;
                out.truncate(n);
            }
            Codec::Lz4
        }
    };
    if out.len() >= data.len() {
        out.clear();
        return Ok(Codec::Raw);
    }
    Ok(codec)
}

/// Decode the zstd frame `stored` into `out` (a `Vec` grows by what it decodes, a slice
/// must hold it all) with this thread's decompressor; returns the bytes written.
fn zstd_decompress<B: zstd::zstd_safe::WriteBuf + ?Sized>(
    stored: &[u8],
    out: &mut B,
) -> Result<usize> {
    ZSTD_D.with(|cell| -> Result<usize> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| Error::new(ErrorKind::Io, format!("zstd init: {e}")))?,
            );
        }
        let Some(d) = slot.as_mut() else {
            return Err(Error::new(ErrorKind::Io, "zstd decompressor missing"));
        };
        d.decompress_to_buffer(stored, out)
            .map_err(|e| Error::corrupt(format!("zstd block does not decode: {e}")))
    })
}

/// Bytes of a delta's stored form before its zstd frame: the base's id.
pub const DELTA_HEADER: usize = 32;

/// Compress `data` against `base` at zstd `level` into `out` as a delta's stored bytes:
/// `base_id`, then a zstd frame whose raw-content prefix is `base` (a prefix, unlike a
/// dictionary, is never parsed, whatever its first bytes are).
pub fn compress_delta(
    level: i32,
    base_id: &[u8; 32],
    base: &[u8],
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    use zstd::zstd_safe::CParameter;
    let zerr = |what: &str, code: usize| {
        Error::new(
            ErrorKind::Io,
            format!(
                "zstd delta {what}: {}",
                zstd::zstd_safe::get_error_name(code)
            ),
        )
    };
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    DELTA_C.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mut guard = Scrub(&mut slot);
        let cctx = guard.context();
        // SAFETY: the context keeps `prefix` only until `guard` is dropped, at the end
        // of this closure however it ends (a panic too), while `base` is still
        // borrowed; the guard resets the context's parameters or frees it.
        let prefix = unsafe { outlive(base) };
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(|c| zerr("level", c))?;
        cctx.ref_prefix(prefix).map_err(|c| zerr("prefix", c))?;
        cctx.compress2(&mut frame, data)
            .map_err(|c| zerr("compress", c))
    })?;
    out.clear();
    out.extend_from_slice(base_id);
    out.extend_from_slice(&frame);
    Ok(())
}

thread_local! {
    /// Contexts for deltas, one of each per thread and reused: creating a zstd context
    /// costs a CPUID (a trap to the hypervisor in a guest) and fresh workspace, which
    /// was 14% of the CPU time of storing a memory file whose changed pages are deltas.
    /// Between uses each holds no prefix and default parameters.
    static DELTA_C: RefCell<Option<zstd::zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static DELTA_D: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// A context kept larger than this after a use is freed rather than kept: a delta of a
/// 4 MiB block at level 19 leaves tens of MiB of workspace, which a pool thread would
/// otherwise hold for its whole life.
const KEEP_CONTEXT_BYTES: usize = 8 << 20;

/// A zstd context a thread keeps between uses.
trait Kept: Sized {
    fn create() -> Self;
    /// Reset to defaults and no prefix; whether the context may then be kept (the
    /// reset worked and its workspace is at most [`KEEP_CONTEXT_BYTES`]).
    fn scrub(&mut self) -> bool;
}

impl Kept for zstd::zstd_safe::CCtx<'static> {
    fn create() -> Self {
        zstd::zstd_safe::CCtx::create()
    }
    fn scrub(&mut self) -> bool {
        self.reset(ResetDirective::SessionAndParameters).is_ok()
            && self.sizeof() <= KEEP_CONTEXT_BYTES
    }
}

impl Kept for zstd::zstd_safe::DCtx<'static> {
    fn create() -> Self {
        zstd::zstd_safe::DCtx::create()
    }
    fn scrub(&mut self) -> bool {
        self.reset(ResetDirective::SessionAndParameters).is_ok()
            && self.sizeof() <= KEEP_CONTEXT_BYTES
    }
}

/// A thread's kept context, lent out for one use. Dropping the guard (when the use
/// ends, by return, error or panic) scrubs the context, and frees it unless it may be
/// kept.
struct Scrub<'s, T: Kept>(&'s mut Option<T>);

impl<T: Kept> Scrub<'_, T> {
    /// The context, created if the thread had none.
    fn context(&mut self) -> &mut T {
        self.0.get_or_insert_with(T::create)
    }
}

impl<T: Kept> Drop for Scrub<'_, T> {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && !c.scrub()
        {
            *self.0 = None;
        }
    }
}

/// `base` with its borrow cut loose, for a context kept across calls to reference for
/// one frame.
///
/// # Safety
/// The context given the result must drop it (a reset of its parameters, or being
/// freed) before `base`'s borrow ends.
unsafe fn outlive(base: &[u8]) -> &'static [u8] {
    // SAFETY: same pointer and length as `base`; the caller bounds how long it is used.
    unsafe { std::slice::from_raw_parts(base.as_ptr(), base.len()) }
}

/// The base id and zstd frame of a delta's stored bytes.
pub fn split_delta(stored: &[u8]) -> Result<([u8; 32], &[u8])> {
    match stored.split_first_chunk::<DELTA_HEADER>() {
        Some((id, frame)) if !frame.is_empty() => Ok((*id, frame)),
        _ => Err(Error::corrupt(format!(
            "delta block is {} bytes, too short for its base id and frame",
            stored.len()
        ))),
    }
}

/// The base id at the front of a delta's stored bytes (of which only the first
/// [`DELTA_HEADER`] need be given).
pub fn delta_base_id(stored: &[u8]) -> Result<[u8; 32]> {
    stored
        .first_chunk::<DELTA_HEADER>()
        .copied()
        .ok_or_else(|| Error::corrupt("delta block too short for its base id"))
}

/// Decode a delta's zstd `frame` (the part after its base id) against `base` into `out`,
/// which must come to exactly `raw_len` bytes.
pub fn decompress_delta(
    frame: &[u8],
    base: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    if raw_len > super::MAX_BLOCK_SIZE as usize {
        return Err(Error::corrupt(format!(
            "delta block claims {raw_len} bytes, more than any block"
        )));
    }
    out.reserve(raw_len);
    DELTA_D.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mut guard = Scrub(&mut slot);
        let dctx = guard.context();
        // SAFETY: as in `compress_delta`: `guard` drops the prefix (or the context) when
        // this closure ends, however it ends, while `base` is still borrowed.
        let prefix = unsafe { outlive(base) };
        dctx.ref_prefix(prefix).map_err(|c| {
            Error::new(
                ErrorKind::Io,
                format!("zstd delta prefix: {}", zstd::zstd_safe::get_error_name(c)),
            )
        })?;
        dctx.decompress(out, frame).map_err(|c| {
            Error::corrupt(format!(
                "delta block does not decode: {}",
                zstd::zstd_safe::get_error_name(c)
            ))
        })
    })?;
    if out.len() != raw_len {
        return Err(Error::corrupt(format!(
            "delta block decoded to {} bytes, expected {raw_len}",
            out.len()
        )));
    }
    Ok(())
}

/// Decode a shared frame ([`Codec::ZstdFrame`]) whole into `out`: its length is the one
/// its header declares, at most [`MAX_FRAME_BYTES`].
pub fn decompress_frame(stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let len = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) if n <= MAX_FRAME_BYTES as u64 => n as usize,
        Ok(Some(n)) => {
            return Err(Error::corrupt(format!(
                "frame declares {n} bytes, more than {MAX_FRAME_BYTES}"
            )));
        }
        _ => return Err(Error::corrupt("frame header does not declare its size")),
    };
    out.reserve(len);
    zstd_decompress(stored, out)?;
    if out.len() != len {
        return Err(Error::corrupt(format!(
            "frame decoded to {} bytes, its header says {len}",
            out.len()
        )));
    }
    Ok(())
}

/// Decode `stored` (encoded with `codec`) into `out`, which must come out `raw_len` long.
pub fn decompress(codec: Codec, stored: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    if matches!(codec, Codec::Zstd | Codec::ZstdFrame) {
        // Decoded into the spare capacity: no clearing first.
        out.reserve(raw_len);
        zstd_decompress(stored, out)?;
        return check_len(out.len(), raw_len);
    }
    if raw_len > super::MAX_BLOCK_SIZE as usize {
        return Err(Error::corrupt(format!(
            "block claims {raw_len} bytes, more than any block"
        )));
    }
    out.resize(raw_len, 0);
    decompress_into(codec, stored, out)
}

/// Decode `stored` (encoded with `codec`) into `out`, which it must fill exactly.
pub fn decompress_into(codec: Codec, stored: &[u8], out: &mut [u8]) -> Result<()> {
    let raw_len = out.len();
    match codec {
        Codec::Raw => {
            if stored.len() != raw_len {
                return Err(Error::corrupt(format!(
                    "raw block is {} bytes, expected {raw_len}",
                    stored.len()
                )));
            }
            out.copy_from_slice(stored);
            Ok(())
        }
        Codec::Zstd | Codec::ZstdFrame => check_len(zstd_decompress(stored, out)?, raw_len),
        Codec::ZstdDelta => Err(Error::corrupt(
            "a delta block decodes only against its base (see decompress_delta)",
        )),
        Codec::ZstdFrameRefs | Codec::ZstdFrameXor => Err(Error::corrupt(
            "a member of a frame with references decodes only through its frame",
        )),
        Codec::Lz4 => {
            let n = lz4_flex::block::decompress_into(stored, out)
                .map_err(|e| Error::corrupt(format!("lz4 block does not decode: {e}")))?;
            check_len(n, raw_len)
        }
    }
}

fn check_len(n: usize, raw_len: usize) -> Result<()> {
    if n != raw_len {
        return Err(Error::corrupt(format!(
            "block decoded to {n} bytes, expected {raw_len}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_settings() -> Vec<Compression> {
        let mut v = vec![Compression::none()];
        for l in [1, 3, 9, 19] {
            v.push(Compression::new(Algorithm::Zstd, Some(l)).expect("valid"));
        }
        for l in [0, 1, 5, 9] {
            v.push(Compression::new(Algorithm::Lz4, Some(l)).expect("valid"));
        }
        v
    }

    fn block() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..9000),
            (proptest::collection::vec(any::<u8>(), 1..64), 0usize..9000).prop_map(|(pat, n)| pat
                .iter()
                .copied()
                .cycle()
                .take(n)
                .collect()),
        ]
    }

    /// The per-thread delta contexts keep nothing from one use to the next: not a
    /// prefix, not a level (the output is a fresh context's, byte for byte), not a
    /// frame cut short by an error.
    #[test]
    fn delta_contexts_are_clean_after_each_use() {
        let base1: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let base2: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 241) as u8).collect();
        let (mut data1, mut data2) = (base1.clone(), base2.clone());
        data1[100] ^= 1;
        data2[200] ^= 1;
        let (mut d1, mut d2, mut out) = (Vec::new(), Vec::new(), Vec::new());
        compress_delta(19, &[1; 32], &base1, &data1, &mut d1).expect("delta 1");
        compress_delta(1, &[2; 32], &base2, &data2, &mut d2).expect("delta 2");
        let (_, f1) = split_delta(&d1).expect("split");
        let (_, f2) = split_delta(&d2).expect("split");
        assert!(f2.len() < 200, "delta 2 was made against its base");
        // Byte for byte what a fresh context makes at level 1: nothing of level 19 or of
        // base1 was left in the kept one.
        let mut fresh = zstd::zstd_safe::CCtx::create();
        fresh
            .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(1))
            .expect("level");
        fresh.ref_prefix(&base2).expect("prefix");
        let mut expect = Vec::with_capacity(zstd::zstd_safe::compress_bound(4096));
        fresh.compress2(&mut expect, &data2).expect("fresh");
        assert_eq!(
            f2,
            &expect[..],
            "kept context made other bytes than a fresh one"
        );
        // Even after zstd's strongest level, with its own window and tables.
        compress_delta(22, &[3; 32], &base1, &data1, &mut out).expect("level 22");
        compress_delta(1, &[2; 32], &base2, &data2, &mut out).expect("level 1 again");
        assert_eq!(&out[DELTA_HEADER..], &expect[..]);
        // A frame cut short fails, and leaves the context usable.
        assert!(decompress_delta(&f1[..f1.len() / 2], &base1, 4096, &mut out).is_err());
        decompress_delta(f2, &base2, 4096, &mut out).expect("decode 2");
        assert_eq!(out, data2);
        decompress_delta(f1, &base1, 4096, &mut out).expect("decode 1");
        assert_eq!(out, data1);
        // Each frame needs its own base, not whatever the context saw before.
        decompress_delta(f1, &base1, 4096, &mut out).expect("decode 1");
        assert!(
            decompress_delta(f2, &base1, 4096, &mut out).map_or(true, |()| out != data2),
            "delta 2 decoded against base 1 gave its bytes"
        );
    }

    proptest! {
        #[test]
        fn roundtrip(data in block()) {
            let mut enc = Vec::new();
            let mut dec = Vec::new();
            for c in all_settings() {
                let codec = compress(c, &data, &mut enc).expect("compress");
                let stored: &[u8] = if codec == Codec::Raw { &data } else { &enc };
                prop_assert!(stored.len() <= data.len());
                decompress(codec, stored, data.len(), &mut dec).expect("decompress");
                prop_assert_eq!(&dec, &data);
                let mut into = vec![0xA5; data.len()];
                decompress_into(codec, stored, &mut into).expect("decompress_into");
                prop_assert_eq!(&into, &data);
                // A buffer of another length is refused, never partly filled and passed.
                let mut longer = vec![0; data.len() + 1];
                prop_assert!(decompress_into(codec, stored, &mut longer).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(codec in 0u8..5, stored in proptest::collection::vec(any::<u8>(), 0..300), len in 0usize..5000) {
            let mut out = Vec::new();
            let codec = Codec::from_u8(codec).expect("valid codec byte");
            if decompress(codec, &stored, len, &mut out).is_ok() {
                prop_assert_eq!(out.len(), len);
            }
            let mut into = vec![0; len];
            let _ = decompress_into(codec, &stored, &mut into);
            if decompress_frame(&stored, &mut out).is_ok() {
                prop_assert!(out.len() <= MAX_FRAME_BYTES);
            }
        }

        #[test]
        fn delta_roundtrip(
            base in block(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..20),
            grow in proptest::collection::vec(any::<u8>(), 0..100),
            level in 1i32..=19,
        ) {
            // A block like its base: a few bytes changed, some appended.
            let mut data = base.clone();
            for (at, b) in edits {
                if !data.is_empty() {
                    let n = data.len();
                    data[at % n] = b;
                }
            }
            data.extend_from_slice(&grow);
            let id = [7u8; 32];
            let mut enc = Vec::new();
            compress_delta(level, &id, &base, &data, &mut enc).expect("compress");
            let (got, frame) = split_delta(&enc).expect("split");
            prop_assert_eq!(got, id);
            let mut dec = Vec::new();
            decompress_delta(frame, &base, data.len(), &mut dec).expect("decode");
            prop_assert_eq!(&dec, &data);
            // Against other bytes than its base, it fails or gives other bytes: the
            // caller's id check catches the latter.
            let other: Vec<u8> = base.iter().map(|b| b ^ 0x5a).collect();
            if decompress_delta(frame, &other, data.len(), &mut dec).is_ok() {
                prop_assert_eq!(dec.len(), data.len());
            }
        }

        #[test]
        fn delta_garbage_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..300), base in proptest::collection::vec(any::<u8>(), 0..300), len in 0usize..5000) {
            let mut out = Vec::new();
            if let Ok((_, frame)) = split_delta(&stored)
                && decompress_delta(frame, &base, len, &mut out).is_ok()
            {
                prop_assert_eq!(out.len(), len);
            }
        }

        #[test]
        fn frames_roundtrip(parts in proptest::collection::vec(block(), 1..6), level in 1i32..=19) {
            let whole: Vec<u8> = parts.concat();
            let mut enc = Vec::new();
            let mut dec = Vec::new();
            let c = Compression::new(Algorithm::Zstd, Some(level)).expect("valid");
            if compress(c, &whole, &mut enc).expect("compress") == Codec::Zstd {
                decompress_frame(&enc, &mut dec).expect("decode");
                prop_assert_eq!(&dec, &whole);
            }
        }
    }

    #[test]
    fn levels_are_checked() {
        assert!(Compression::new(Algorithm::Zstd, Some(0)).is_err());
        assert!(Compression::new(Algorithm::Zstd, Some(20)).is_err());
        assert!(Compression::new(Algorithm::Lz4, Some(10)).is_err());
        assert!(Compression::new(Algorithm::Lz4, Some(-1)).is_err());
        assert!(Compression::new(Algorithm::Lz4, None).is_ok());
    }

    #[test]
    fn empty_is_raw_for_every_setting() {
        let mut out = vec![1, 2, 3];
        for c in all_settings() {
            assert_eq!(compress(c, &[], &mut out).expect("ok"), Codec::Raw);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn incompressible_is_raw() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut out = Vec::new();
        let c = compress(
            Compression::default(),
            blake3::hash(&data).as_bytes(),
            &mut out,
        )
        .expect("ok");
        assert_eq!(c, Codec::Raw);
    }

    #[test]
    fn lz4_high_levels_compress_smaller() {
        // Text-like data where HC finds more matches than the fast mode.
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| {
                b"the quick brown fox jumps over the lazy dog 0123456789"
                    [((i * 7) ^ (i >> 5)) as usize % 54]
            })
            .collect();
        let mut fast = Vec::new();
        let mut hc = Vec::new();
        compress(
            Compression::new(Algorithm::Lz4, Some(0)).expect("ok"),
            &text,
            &mut fast,
        )
        .expect("ok");
        compress(
            Compression::new(Algorithm::Lz4, Some(9)).expect("ok"),
            &text,
            &mut hc,
        )
        .expect("ok");
        assert!(hc.len() < fast.len(), "hc {} fast {}", hc.len(), fast.len());
    }
}
