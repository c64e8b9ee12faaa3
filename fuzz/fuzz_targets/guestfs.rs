//! A disk image from a guest, mutated: partition tables and ext2/3/4 through the whole
//! read surface (every volume's tree walked, every entry stat'ed, every file read,
//! every link target read). Errors, never panics, hangs or reads outside the image
//! (the source is a buffer of exactly the input: a read past it is an error).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use stasis_guestfs::{Filesystem, Kind, Source, join, volumes};

/// Bounds of the walk, so a huge but valid tree cannot make an input slow.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: u64 = 64 << 20;

fn walk(fs: &Filesystem, dir: &[u8], depth: u32, seen: &mut usize, read: &mut u64) {
    let Ok(entries) = fs.list(dir) else { return };
    for e in entries {
        *seen += 1;
        if *seen > MAX_ENTRIES || depth > 64 {
            return;
        }
        let p = join(dir, &e.name);
        let _ = fs.stat(&p);
        match e.kind {
            Kind::Dir => walk(fs, &p, depth + 1, seen, read),
            Kind::File if *read + e.size <= MAX_BYTES => {
                let mut n = 0u64;
                if fs
                    .read_file(&p, &mut |b| {
                        n += b.len() as u64;
                        Ok(())
                    })
                    .is_ok()
                {
                    assert_eq!(n, e.size, "a file read whole has its size");
                }
                *read += e.size;
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let disk: Arc<dyn Source> = Arc::new(data.to_vec());
    let Ok(vols) = volumes(disk) else { return };
    for v in vols {
        let (mut seen, mut read) = (0, 0);
        walk(&v.fs, b"/", 0, &mut seen, &mut read);
    }
});
