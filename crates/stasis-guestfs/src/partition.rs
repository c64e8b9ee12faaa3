//! Partition tables: GPT (read by the `gpt` crate) and MBR (its four primary records
//! parsed by the same crate; logical partitions followed through the extended
//! partition's chain of EBRs, at most [`MAX_LOGICAL`], each at most once).
//!
//! Sectors are 512 bytes. A table is looked for only when the disk does not start
//! with a filesystem itself (an ext superblock at 1024). Every partition found must
//! lie inside the disk; one that does not is an error, not a shorter read. Before the
//! `gpt` crate sees a GPT header, its entry size and count are checked here (the crate
//! asserts on an entry size other than 128, which a crafted header may claim).

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};

use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::source::Source;

/// The sector size tables are read with.
pub const SECTOR: u64 = 512;
/// The most logical partitions followed in an MBR's extended partition.
pub const MAX_LOGICAL: usize = 128;
/// The most GPT entries a header may claim.
pub const MAX_GPT_ENTRIES: u32 = 4096;

/// Which table a partition is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// The GUID partition table.
    Gpt,
    /// The DOS partition table.
    Mbr,
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Its number, as Linux names it (`p1`, ...; MBR logical ones from 5).
    pub number: u32,
    /// Its first byte on the disk.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its table.
    pub scheme: Scheme,
    /// Its type: a GPT type GUID, or an MBR type byte (`0x83`).
    pub kind: String,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

/// Whether `src` starts with an ext2/3/4 superblock (magic 0xEF53 at 1024 + 56).
pub fn starts_with_ext(src: &dyn Source) -> bool {
    let mut magic = [0u8; 2];
    src.read_exact_at(1024 + 56, &mut magic).is_ok() && magic == [0x53, 0xEF]
}

/// The partitions of `src`, in number order; none when it holds no table (a bare
/// filesystem, or nothing known).
pub fn partitions(src: &dyn Source) -> Result<Vec<Partition>> {
    if starts_with_ext(src) || src.len() < 2 * SECTOR {
        return Ok(Vec::new());
    }
    let mut sector = [0u8; SECTOR as usize];
    src.read_exact_at(0, &mut sector)?;
    if sector[510..] != [0x55, 0xAA] {
        return Ok(Vec::new());
    }
    let Ok(mbr) = ProtectiveMBR::from_bytes(&sector, LogicalBlockSize::Lb512) else {
        return Ok(Vec::new());
    };
    let records: Vec<_> = (0..4).filter_map(|i| mbr.partition(i)).collect();
    if records.iter().any(|r| r.os_type == 0xEE) {
        return gpt_partitions(src);
    }
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.os_type == 0 || r.lb_size == 0 {
            continue;
        }
        let number = i as u32 + 1;
        if matches!(r.os_type, 0x05 | 0x0F | 0x85) {
            logical(src, u64::from(r.lb_start), &mut out)?;
            continue;
        }
        out.push(checked(
            src,
            number,
            u64::from(r.lb_start),
            u64::from(r.lb_size),
            Scheme::Mbr,
            format!("0x{:02x}", r.os_type),
        )?);
    }
    out.sort_by_key(|p| p.number);
    Ok(out)
}

fn checked(
    src: &dyn Source,
    number: u32,
    first: u64,
    sectors: u64,
    scheme: Scheme,
    kind: String,
) -> Result<Partition> {
    let start = first.checked_mul(SECTOR);
    let len = sectors.checked_mul(SECTOR);
    match (start, len) {
        (Some(start), Some(len)) if start.checked_add(len).is_some_and(|e| e <= src.len()) => {
            Ok(Partition {
                number,
                start,
                len,
                scheme,
                kind,
            })
        }
        _ => Err(corrupt(format!(
            "partition {number} ({sectors} sectors from sector {first}) reaches past the disk's {} bytes",
            src.len()
        ))),
    }
}

/// The logical partitions of the extended partition starting at sector `base`.
fn logical(src: &dyn Source, base: u64, out: &mut Vec<Partition>) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut ebr = base;
    let mut number = 5;
    while out.len() < MAX_LOGICAL + 4 {
        if !seen.insert(ebr) {
            return Err(corrupt(format!("the EBR chain loops back to sector {ebr}")));
        }
        let mut sector = [0u8; SECTOR as usize];
        let at = ebr
            .checked_mul(SECTOR)
            .ok_or_else(|| corrupt("an EBR past any disk"))?;
        src.read_exact_at(at, &mut sector)
            .map_err(|e| e.context(format!("the EBR at sector {ebr}")))?;
        let table = ProtectiveMBR::from_bytes(&sector, LogicalBlockSize::Lb512)
            .map_err(|e| corrupt(format!("the EBR at sector {ebr}: {e}")))?;
        let (Some(this), next) = (table.partition(0), table.partition(1)) else {
            return Ok(());
        };
        if this.os_type != 0 && this.lb_size != 0 {
            let first = ebr
                .checked_add(u64::from(this.lb_start))
                .ok_or_else(|| corrupt("a logical partition past any disk"))?;
            out.push(checked(
                src,
                number,
                first,
                u64::from(this.lb_size),
                Scheme::Mbr,
                format!("0x{:02x}", this.os_type),
            )?);
            number += 1;
        }
        match next {
            Some(n) if n.lb_start != 0 && matches!(n.os_type, 0x05 | 0x0F | 0x85) => {
                ebr = base
                    .checked_add(u64::from(n.lb_start))
                    .ok_or_else(|| corrupt("an EBR past any disk"))?;
            }
            _ => return Ok(()),
        }
    }
    Err(corrupt(format!(
        "more than {MAX_LOGICAL} logical partitions"
    )))
}

/// A GPT header at `lba`, if one is there: its entry count and size must be ones the
/// `gpt` crate reads without asserting.
fn check_gpt_header(src: &dyn Source, lba: u64) -> Result<()> {
    let mut h = [0u8; 92];
    if src.read_exact_at(lba * SECTOR, &mut h).is_err() || &h[..8] != b"EFI PART" {
        return Ok(());
    }
    let num = u32::from_le_bytes([h[80], h[81], h[82], h[83]]);
    let size = u32::from_le_bytes([h[84], h[85], h[86], h[87]]);
    if size != 128 || num > MAX_GPT_ENTRIES {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "a GPT of {num} entries of {size} bytes (expected entries of 128 bytes, at most {MAX_GPT_ENTRIES})"
            ),
        ));
    }
    Ok(())
}

fn gpt_partitions(src: &dyn Source) -> Result<Vec<Partition>> {
    check_gpt_header(src, 1)?;
    check_gpt_header(src, src.len() / SECTOR - 1)?;
    let dev = Device { src, pos: 0 };
    let disk = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(dev)
        .map_err(|e| corrupt(format!("the GPT: {e}")))?;
    let mut out = Vec::new();
    for (number, p) in disk.partitions() {
        if !p.is_used() {
            continue;
        }
        if p.last_lba < p.first_lba {
            return Err(corrupt(format!(
                "GPT partition {number} ends (sector {}) before it starts ({})",
                p.last_lba, p.first_lba
            )));
        }
        out.push(checked(
            src,
            *number,
            p.first_lba,
            p.last_lba - p.first_lba + 1,
            Scheme::Gpt,
            p.part_type_guid.guid.to_string(),
        )?);
    }
    Ok(out)
}

/// A [`Source`] as the `gpt` crate's read-only device.
struct Device<'a> {
    src: &'a dyn Source,
    pos: u64,
}

impl std::fmt::Debug for Device<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("pos", &self.pos).finish()
    }
}

impl Read for Device<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.src.len().saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.src
            .read_exact_at(self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Device<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("a snapshot's disk is read-only"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Device<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let bad = || std::io::Error::other("a seek outside the disk");
        let to = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.src.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(bad)?;
        self.pos = to;
        Ok(to)
    }
}
