//! Damage detected, never served: single flipped bytes and truncations at random places
//! in data packs, tree packs, index files and the catalog database. `verify
//! --read-data` reports the damage, `restore` fails or gives the exact bytes (never
//! wrong ones), and `verify --repair` leaves a repository whose every snapshot either
//! restores byte-identical or is named as having lost blocks.

mod common;
use common::run_stasis as stasis;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn copy_dir(src: &Path, dst: &Path) {
    let _ = fs::remove_dir_all(dst);
    fs::create_dir_all(dst).expect("mkdir");
    for e in fs::read_dir(src).expect("ls") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).expect("copy");
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Restore `spec`: Ok(true) identical, Ok(false) refused with an error. Wrong bytes
/// fail the test.
fn restore_is_exact_or_refused(
    repo: &Path,
    spec: &str,
    img: &Path,
    out: &Path,
    what: &str,
) -> bool {
    let _ = fs::remove_dir_all(out);
    let r = stasis(repo, &["restore", spec, out.to_str().expect("utf8")]);
    if !r.status.success() {
        assert!(!r.stderr.is_empty(), "{what}: a failed restore says why");
        return false;
    }
    let got = fs::read(out.join("root")).expect("restored");
    assert!(
        got == fs::read(img).expect("src"),
        "{what}: {spec} restored WRONG bytes"
    );
    true
}

#[test]
fn random_damage_is_reported_and_never_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let base = common::make_ext4(d, "base.img", "32M");
    let child = d.join("child.img");
    fs::copy(&base, &child).expect("copy");
    common::modify_ext4(d, &child, 9);
    let template = d.join("template");
    fs::create_dir(&template).expect("mkdir");
    let ok = |repo: &Path, args: &[&str]| {
        let o = stasis(repo, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(&template, &["init", "--pack-size", "1MiB"]);
    ok(
        &template,
        &[
            "create",
            "vm",
            "base",
            "--disk",
            &format!("root={}", base.display()),
        ],
    );
    ok(
        &template,
        &[
            "create",
            "vm",
            "child",
            "--disk",
            &format!("root={}", child.display()),
        ],
    );
    let snaps = [("vm/base", base.as_path()), ("vm/child", child.as_path())];

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let repo = d.join("work");
    let out = d.join("out");
    for case in 0..48u64 {
        copy_dir(&template, &repo);
        let mut packs: Vec<PathBuf> = files(&repo.join("store/packs"));
        packs.sort_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0));
        let target = match case % 4 {
            0 => packs[packs.len() - 1 - rng.below(2) as usize].clone(), // data packs
            1 => packs[0].clone(),                                       // the tree pack
            2 => {
                let idx = files(&repo.join("store/index"));
                idx[rng.below(idx.len() as u64) as usize].clone()
            }
            _ => repo.join("catalog.db"),
        };
        let mut bytes = fs::read(&target).expect("read");
        let truncate = rng.below(4) == 0;
        let what = if truncate {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(at);
            format!("case {case}: {} truncated to {at}", target.display())
        } else {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            format!("case {case}: {} byte {at} flipped", target.display())
        };
        fs::write(&target, &bytes).expect("write");
        let catalog = case % 4 == 3;

        let v = stasis(&repo, &["--json", "verify", "--read-data"]);
        let mut served = 0;
        for (spec, img) in snaps {
            if restore_is_exact_or_refused(&repo, spec, img, &out, &what) {
                served += 1;
            }
        }
        if !catalog {
            // Every byte of packs and index files is covered by a checksum.
            assert!(!v.status.success(), "{what}: verify missed it");
        } else if v.status.success() {
            // SQLite has no page checksums: damage in free space or an unused part of
            // a page changes nothing; then everything must still read right.
            assert_eq!(served, 2, "{what}: verify clean but a restore failed");
        }
        if catalog {
            continue; // repair rebuilds the store's index, not the catalog
        }
        // Repair, then every snapshot restores exactly or is named as having lost
        // blocks; verify afterwards names only those.
        let r = stasis(&repo, &["--json", "verify", "--repair"]);
        let rv: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
        let problems = rv["problems"].as_array().cloned().unwrap_or_default();
        for (spec, img) in snaps {
            let intact = restore_is_exact_or_refused(&repo, spec, img, &out, &what);
            let named = problems
                .iter()
                .any(|p| p["object"].as_str().is_some_and(|o| o.starts_with(spec)));
            assert!(
                intact || named,
                "{what}: {spec} neither restores nor is named after repair: {rv}"
            );
        }
        let after = stasis(&repo, &["--json", "verify", "--read-data"]);
        let av: Value = serde_json::from_slice(&after.stdout).unwrap_or(Value::Null);
        for p in av["problems"].as_array().cloned().unwrap_or_default() {
            let o = p["object"].as_str().unwrap_or_default();
            assert!(
                o.starts_with("vm/"),
                "{what}: after repair only lost snapshot blocks remain, got {p}"
            );
        }
    }
}
