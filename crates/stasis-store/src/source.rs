//! Input files: opening them, their size, and where their data is (SEEK_DATA/SEEK_HOLE).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::SeekFrom as RSeek;
use rustix::io::Errno;

use crate::error::{Error, ErrorKind, IoContext, Result};

/// An input opened for ingest.
#[derive(Debug)]
pub struct Input {
    /// The open file.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
}

/// Open `path` for reading as a payload: a regular file or a block device.
pub fn open_input(path: &Path) -> Result<Input> {
    let md = std::fs::metadata(path).ctx(|| format!("cannot read {}", path.display()))?;
    let ft = md.file_type();
    if ft.is_dir() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is a directory, not an image file", path.display()),
        ));
    }
    if !ft.is_file() && !ft.is_block_device() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a regular file or block device", path.display()),
        ));
    }
    let mut file = File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    let size = if ft.is_file() {
        md.len()
    } else {
        file.seek(SeekFrom::End(0))
            .ctx(|| format!("cannot size {}", path.display()))?
    };
    Ok(Input { file, size })
}

/// The data regions of `file` (sorted, disjoint, within `0..size`). Filesystems without
/// SEEK_DATA support report the whole file as data.
pub fn data_regions(file: &File, size: u64) -> Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, RSeek::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => {
                return Ok(std::iter::once(0..size).collect());
            }
            Err(e) => return Err(Error::io("SEEK_DATA", e.into())),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(file, RSeek::Hole(start)) {
            Ok(e) => e.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(Error::io("SEEK_HOLE", e.into())),
        };
        if end <= start {
            // A file that changes under us; treat the rest as data.
            out.push(start..size);
            break;
        }
        out.push(start..end);
        pos = end;
    }
    Ok(out)
}

/// Whether every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises well and still stops early on data.
    data.chunks(512)
        .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn regions_of_a_sparse_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f");
        let f = File::create(&p).expect("create");
        f.set_len(10 << 20).expect("len");
        f.write_all_at(&[1u8; 4096], 1 << 20).expect("write");
        f.write_all_at(&[0u8; 8192], 5 << 20).expect("write");
        let inp = open_input(&p).expect("open");
        let r = data_regions(&inp.file, inp.size).expect("regions");
        // Filesystems round to their own block size; both written ranges must be inside.
        assert!(
            r.iter()
                .any(|x| x.start <= 1 << 20 && x.end >= (1 << 20) + 4096),
            "{r:?}"
        );
        assert!(
            r.iter()
                .any(|x| x.start <= 5 << 20 && x.end >= (5 << 20) + 8192),
            "{r:?}"
        );
        let covered: u64 = r.iter().map(|x| x.end - x.start).sum();
        assert!(covered < 10 << 20 || (r.len() == 1 && r[0] == (0..10 << 20)));
    }

    #[test]
    fn bad_inputs() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(
            open_input(dir.path()).map_err(|e| e.kind()).err(),
            Some(ErrorKind::InvalidInput)
        );
        assert_eq!(
            open_input(&dir.path().join("none"))
                .map_err(|e| e.kind())
                .err(),
            Some(ErrorKind::NotFound)
        );
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 5000]));
        let mut v = vec![0u8; 5000];
        v[4999] = 1;
        assert!(!is_zero(&v));
    }
}
