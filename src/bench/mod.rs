//! `stasis bench`: what the store's block sizes and codecs do to the user's own files
//! (`codecs`), and how fast a repository ingests, restores and serves reads (`repo`).
//! The command line and tables are in `cmd::bench`.

pub mod chart;
pub mod codecs;
pub mod image;
pub mod repo;
pub mod sample;

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A block size as people write it: `4 KiB`, `1 MiB`.
pub fn block_label(bs: u64) -> String {
    if bs >= 1 << 20 && bs.is_multiple_of(1 << 20) {
        format!("{} MiB", bs >> 20)
    } else if bs >= 1 << 10 && bs.is_multiple_of(1 << 10) {
        format!("{} KiB", bs >> 10)
    } else {
        format!("{bs} B")
    }
}

/// A progress bar on stderr, hidden with `--json` or when stderr is not a terminal.
/// `bytes` chooses a byte counter over a step counter.
pub fn progress(json: bool, len: u64, bytes: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{msg:24} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{msg:24} [{bar:30}] {pos}/{len} {elapsed}"
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(block_label(4096), "4 KiB");
        assert_eq!(block_label(64 << 10), "64 KiB");
        assert_eq!(block_label(4 << 20), "4 MiB");
        assert_eq!(block_label(1536 << 10), "1536 KiB");
    }
}
