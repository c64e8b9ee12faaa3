//! End-to-end tests of `stasis bench`: the real binary on a constructed file and a
//! temporary repository. Nothing here asserts on a speed or a latency.

mod common;
use common::{noise, run_stasis as stasis, stasis_ok as ok};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;

const MIB: u64 = 1 << 20;

fn json(repo: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(repo, &a)).expect("json")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// A 6 MiB file: a 1 MiB region R (half text, half random) written four times, then
/// 1 MiB of written zeros, then a 1 MiB hole. At every block size up to 1 MiB the
/// data dedups exactly 4 times.
fn constructed(path: &Path) {
    let mut r: Vec<u8> = (0..)
        .flat_map(|k: u32| format!("line {k} of the bench test file, key=value\n").into_bytes())
        .take((MIB / 2) as usize)
        .collect();
    r.extend(noise((MIB / 2) as usize, 11));
    let file = File::create(path).expect("create");
    file.set_len(6 * MIB).expect("size");
    for i in 0..4 {
        file.write_all_at(&r, i * MIB).expect("write");
    }
    file.write_all_at(&vec![0u8; MIB as usize], 4 * MIB)
        .expect("write");
}

#[test]
fn codecs_on_a_constructed_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("no-repo-needed");
    let input = dir.path().join("input.img");
    constructed(&input);
    let svg = dir.path().join("chart.svg");
    let input_s = input.to_str().expect("utf8 path");
    let svg_s = svg.to_str().expect("utf8 path");
    let v = json(
        &repo,
        &[
            "bench",
            "codecs",
            input_s,
            "--block-sizes",
            "4K,64K,1M,4M",
            "--codecs",
            "none,lz4,lz4:9,zstd:1,zstd:9",
            "--chart",
            svg_s,
        ],
    );
    assert!(!repo.exists(), "bench codecs needs no repository");

    let sample = &v["sample"];
    assert_eq!(u(sample, "logical_bytes"), 6 * MIB);
    assert_eq!(u(sample, "sampled_bytes"), 6 * MIB, "everything fits");
    assert_eq!(u(sample, "stride"), 1);

    let sizes = v["block_sizes"].as_array().expect("block_sizes");
    assert_eq!(sizes.len(), 4);
    for d in sizes {
        let bs = u(d, "block_size");
        if bs <= MIB {
            assert_eq!(u(d, "data_bytes"), 4 * MIB, "{d}");
            assert_eq!(u(d, "unique_bytes"), MIB, "{d}");
            assert_eq!(f(d, "dedup_ratio"), 4.0, "{d}");
            assert_eq!(u(d, "zero_bytes"), MIB, "{d}");
            assert_eq!(u(d, "hole_bytes"), MIB, "{d}");
        } else {
            // One 4 MiB block of R R R R, and one 2 MiB block of zeros and hole
            // (it touches data, so it is read, and it is all zero).
            assert_eq!(bs, 4 * MIB);
            assert_eq!(u(d, "data_bytes"), 4 * MIB, "{d}");
            assert_eq!(f(d, "dedup_ratio"), 1.0, "{d}");
            assert_eq!(u(d, "zero_bytes"), 2 * MIB, "{d}");
            assert_eq!(u(d, "hole_bytes"), 0, "{d}");
        }
    }

    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4 * 5);
    for r in rows {
        let (dedup, compr, total) = (
            f(r, "dedup_ratio"),
            f(r, "compression_ratio"),
            f(r, "stored_ratio"),
        );
        assert!(dedup >= 1.0 && compr >= 1.0 && total >= dedup, "{r}");
        assert!((total - dedup * compr).abs() < 1e-9 * total, "{r}");
        assert!(u(r, "stored_bytes") <= u(r, "unique_bytes"), "{r}");
        assert_eq!(u(r, "data_bytes"), 4 * MIB);
        for k in ["compress_mb_s", "decompress_mb_s"] {
            assert!(r[k].is_null() || f(r, k) > 0.0, "{r}");
        }
        if r["codec"] == "none" {
            assert_eq!(compr, 1.0, "{r}");
            assert_eq!(u(r, "stored_bytes"), u(r, "unique_bytes"), "{r}");
        } else {
            // Half of R is text: every real codec shrinks it, and the random half
            // is kept raw at block sizes that separate the halves.
            assert!(compr > 1.3, "{r}");
            if u(r, "block_size") <= MIB / 2 {
                assert!(u(r, "raw_blocks") > 0, "{r}");
            }
        }
    }

    let text = fs::read_to_string(&svg).expect("chart written");
    assert!(text.trim_start().starts_with("<svg"), "not an SVG");
    assert!(text.trim_end().ends_with("</svg>"), "SVG not closed");
    for series in ["4 KiB", "64 KiB", "1 MiB", "4 MiB"] {
        assert!(text.contains(series), "series {series} missing");
    }
    for codec in ["lz4:9", "zstd:1", "zstd:9"] {
        assert!(text.contains(codec), "point label {codec} missing");
    }

    // The human table: one line per block size and codec.
    let out = ok(
        &repo,
        &[
            "bench",
            "codecs",
            input_s,
            "--block-sizes",
            "64K",
            "--codecs",
            "none,zstd:3",
        ],
    );
    assert!(out.contains("64 KiB   zstd:3  4.00x"), "{out}");
}

#[test]
fn codecs_refuses_bad_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let input = dir.path().join("input.img");
    fs::write(&input, noise(1 << 16, 3)).expect("write");
    let input_s = input.to_str().expect("utf8 path");
    for (args, needle) in [
        (vec!["--codecs", "gzip"], "unknown compression"),
        (vec!["--codecs", "zstd:25"], "out of range"),
        (vec!["--block-sizes", "3K"], "power of two"),
        (vec!["--block-sizes", "8M"], "power of two"),
    ] {
        let mut a = vec!["bench", "codecs", input_s];
        a.extend(args);
        let out = stasis(&repo, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{a:?} should fail");
        assert!(err.contains(needle), "{a:?}: expected {needle:?} in {err}");
    }
    let out = stasis(&repo, &["bench", "codecs", "/nonexistent/file"]);
    assert!(!out.status.success());
}

#[test]
fn repo_round_trip_leaves_no_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).expect("mkdir");
    ok(&repo, &["init"]);
    // Another VM's snapshot, which the bench must leave alone.
    let keep = dir.path().join("keep.img");
    fs::write(&keep, noise(3 << 20, 5)).expect("write");
    let keep_disk = format!("disk={}", keep.display());
    ok(&repo, &["create", "keep", "one", "--disk", &keep_disk]);

    let v = json(
        &repo,
        &[
            "bench",
            "repo",
            "--size",
            "32MiB",
            "--reads",
            "200",
            "--tmp-dir",
            tmp.to_str().expect("utf8 path"),
        ],
    );
    assert_eq!(v["restore_identical"], true, "{v}");
    assert_eq!(v["deleted"], true, "{v}");
    assert_eq!(u(&v["image"], "size_bytes"), 32 * MIB);
    assert_eq!(u(&v["cold_reads"], "count"), 200);
    assert_eq!(u(&v["warm_reads"], "count"), 200);
    let stored = u(&v, "stored_bytes");
    assert!(stored > 0 && stored < 32 * MIB, "{v}");
    let id = v["snapshot_id"].as_str().expect("id").to_string();
    let vm = v["vm"].as_str().expect("vm").to_string();
    assert!(vm.starts_with("bench-"), "{vm}");

    // Gone from the live list, kept as deleted in the history.
    let live = json(&repo, &["list"]);
    let live = live.as_array().expect("list");
    assert!(live.iter().all(|s| s["id"] != id.as_str()), "{live:?}");
    assert!(
        live.iter().any(|s| s["name"] == "one"),
        "other snapshots stay"
    );
    let all = json(&repo, &["list", "--all"]);
    let gone = all
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("listed with --all");
    assert_eq!(gone["status"], "deleted");
    ok(&repo, &["show", "keep"]);
    // The temporary image and its restored copy are removed.
    assert_eq!(fs::read_dir(&tmp).expect("tmp").count(), 0);
    // The repository is consistent afterwards.
    ok(&repo, &["verify", "--read-data"]);
}
