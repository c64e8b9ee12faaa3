//! Where a disk's bytes come from: anything that reads at an offset ([`Source`]), and
//! a window of it ([`Window`]: a partition) that refuses every read outside it.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// Random-access bytes of a known length: a snapshot's payload, a file, a buffer.
pub trait Source: Send + Sync {
    /// Its length in bytes.
    fn len(&self) -> u64;

    /// Whether it holds no byte.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `offset`; an error if any of it lies past the end or cannot be
    /// read.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| past_end(offset, buf.len()))?;
        let end = start
            .checked_add(buf.len())
            .filter(|e| *e <= self.as_slice().len())
            .ok_or_else(|| past_end(offset, buf.len()))?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

impl Source for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
            .map_err(|e| Error::new(ErrorKind::Io, format!("reading at {offset}: {e}")))
    }
}

fn past_end(offset: u64, len: usize) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("a read of {len} bytes at {offset} reaches past the end"),
    )
}

/// `len` bytes of a source from `start`: reads outside it are errors, never reads of
/// the bytes around it.
#[derive(Clone)]
pub struct Window {
    src: Arc<dyn Source>,
    start: u64,
    len: u64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// All of `src`.
    pub fn whole(src: Arc<dyn Source>) -> Window {
        let len = src.len();
        Window { src, start: 0, len }
    }

    /// `len` bytes from `start` of `src`; an error if they are not all in it.
    pub fn new(src: Arc<dyn Source>, start: u64, len: u64) -> Result<Window> {
        match start.checked_add(len) {
            Some(end) if end <= src.len() => Ok(Window { src, start, len }),
            _ => Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "a partition of {len} bytes at {start} reaches past the disk's {} bytes",
                    src.len()
                ),
            )),
        }
    }

    /// Where it starts in its source.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl Source for Window {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.src.read_exact_at(self.start + offset, buf),
            _ => Err(past_end(offset, buf.len())),
        }
    }
}
