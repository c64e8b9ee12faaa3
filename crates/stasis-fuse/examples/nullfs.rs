//! The FUSE ceiling: one file whose bytes come from memory, mounted exactly like a stasis
//! mount (the same [`stasis_fuse::Tuning`]: mount options, dispatch threads, clone_fd,
//! max_readahead, max_background, bdi readahead, and FOPEN_KEEP_CACHE on open). Reading it
//! measures what FUSE itself costs; `tools/bench-mount.sh` compares stasis with it.
//!
//! usage: nullfs MOUNTPOINT [SIZE_BYTES]   (default 2 GiB; the file is MOUNTPOINT/file)
//!
//! Serves until unmounted (`umount MOUNTPOINT`); then prints the read request sizes the
//! kernel sent. `STASIS_FUSE_TUNING` applies as it does to `stasis mount`.

mod common;

use std::path::PathBuf;

use fuser::{Errno, ReplyData};
use stasis_fuse::{ReadSizes, Tuning};

/// The bytes served: a 1 MiB pattern, twice, so any request of up to 1 MiB at any
/// offset is one slice of it.
const PERIOD: usize = 1 << 20;

#[derive(Debug)]
struct NullFs {
    size: u64,
    pattern: Vec<u8>,
    sizes: ReadSizes,
}

impl common::Source for NullFs {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, size: u32, reply: ReplyData) {
        self.sizes.record(size);
        let len = u64::from(size).min(self.size.saturating_sub(offset)) as usize;
        let start = (offset % PERIOD as u64) as usize;
        match self.pattern.get(start..start + len.min(PERIOD)) {
            Some(d) => reply.data(d),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn destroy(&mut self, tuning: &Tuning) {
        eprintln!(
            "nullfs: {tuning:?}; read requests by size: {}",
            self.sizes.summary()
        );
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(point) = args.next().map(PathBuf::from) else {
        eprintln!("usage: nullfs MOUNTPOINT [SIZE_BYTES]");
        return std::process::ExitCode::FAILURE;
    };
    let size = match args.next().map(|s| s.to_string_lossy().parse::<u64>()) {
        None => 2 << 30,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("nullfs: SIZE_BYTES: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Some(tuning) = common::tuning("nullfs") else {
        return std::process::ExitCode::FAILURE;
    };
    // Not zeros (a page of zeros could be special-cased somewhere): a fixed byte pattern.
    let pattern: Vec<u8> = (0..2 * PERIOD)
        .map(|i| (i % PERIOD).wrapping_mul(2654435761) as u8 >> 1 | 1)
        .collect();
    let fs = NullFs {
        size,
        pattern,
        sizes: ReadSizes::default(),
    };
    common::serve("nullfs", fs, tuning, &point)
}
