//! Large byte buffers backed by transparent huge pages where the kernel allows them.
//!
//! Ingest fills fresh multi-MiB buffers (the read batches and the pack being built),
//! and fresh anonymous memory faults in one 4 KiB page at a time: 2,048 faults per
//! 8 MiB, each taken inside the `pread` or `memcpy` that first touches it. Advising
//! `MADV_HUGEPAGE` before the first touch turns most of that into 2 MiB faults (THP
//! "madvise" mode, the common default); with THP off it changes nothing.

use std::ffi::c_void;

const HUGE: usize = 2 << 20;

/// Ask for huge pages over the 2 MiB-aligned interior of `v`'s allocation.
fn advise(v: &Vec<u8>) {
    let base = v.as_ptr() as usize;
    let start = base.next_multiple_of(HUGE);
    let end = base.saturating_add(v.capacity()) & !(HUGE - 1);
    if end > start {
        // SAFETY: start..end lies inside `v`'s live allocation, and MADV_HUGEPAGE changes
        // only how those pages are backed, never their contents. Only a hint: an
        // error (THP compiled out, say) leaves the memory as it was.
        let _ = unsafe {
            rustix::mm::madvise(
                start as *mut c_void,
                end - start,
                rustix::mm::Advice::LinuxHugepage,
            )
        };
    }
}

/// `len` zero bytes.
pub(crate) fn zeroed(len: usize) -> Vec<u8> {
    let v = vec![0u8; len];
    advise(&v);
    v
}

/// An empty buffer that holds `capacity` bytes without growing.
pub(crate) fn with_capacity(capacity: usize) -> Vec<u8> {
    let v = Vec::with_capacity(capacity);
    advise(&v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_what_they_say() {
        for len in [0, 1, 4096, HUGE - 1, HUGE, 3 * HUGE + 17] {
            let z = zeroed(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&b| b == 0));
            let mut c = with_capacity(len);
            assert!(c.is_empty() && c.capacity() >= len);
            c.extend(std::iter::repeat_n(7u8, len));
            assert!(c.iter().all(|&b| b == 7));
        }
    }
}
