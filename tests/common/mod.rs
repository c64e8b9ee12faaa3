//! Helpers shared by the end-to-end tests (each test crate uses some of them).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `stasis` binary under test.
pub const STASIS_BIN: &str = env!("CARGO_BIN_EXE_stasis");

/// `stasis --repo REPO ARGS...`, ignoring any STASIS_REPO of the environment.
pub fn run_stasis(repo: &Path, args: &[&str]) -> Output {
    run_stasis_env(repo, args, &[])
}

/// [`run_stasis`] with more environment variables (an object store's `AWS_*`).
pub fn run_stasis_env(repo: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(STASIS_BIN)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("STASIS_REPO")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run stasis")
}

/// [`run_stasis`], which must succeed; its stdout.
pub fn stasis_ok(repo: &Path, args: &[&str]) -> String {
    stasis_ok_env(repo, args, &[])
}

/// [`run_stasis_env`], which must succeed; its stdout.
pub fn stasis_ok_env(repo: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let out = run_stasis_env(repo, args, env);
    assert!(
        out.status.success(),
        "stasis {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic incompressible bytes (xorshift64), `n` of them from `seed`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 image (`size`, e.g. `96M`) made with `mkfs.ext4 -d` from a tree of text, binary-like and
/// random files, like a small root filesystem.
pub fn make_ext4(dir: &Path, name: &str, size: &str) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    for d in ["etc", "usr/bin", "var/log", "home/user"] {
        fs::create_dir_all(src.join(d)).expect("mkdir");
    }
    for i in 0..40 {
        let text: String = (0..200)
            .map(|k| format!("line {k} of config file {i}: key=value\n"))
            .collect();
        fs::write(src.join(format!("etc/conf{i}")), text).expect("write");
    }
    // Binary-like files: repeated structure with some noise, some shared between files.
    let shared = noise(300_000, 7);
    for i in 0..12 {
        let mut b = shared.clone();
        b.extend(noise(100_000 + i * 5000, i as u64 + 100));
        fs::write(src.join(format!("usr/bin/tool{i}")), b).expect("write");
    }
    fs::write(src.join("home/user/random.bin"), noise(3 << 20, 42)).expect("write");
    fs::write(src.join("var/log/syslog"), "boot ok\n".repeat(20_000)).expect("write");
    let img = dir.join(name);
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&img)
        .arg(size));
    img
}

/// Change an image in place the way a running VM would: new files, a deletion, a
/// rewritten log (through debugfs, so the filesystem stays consistent).
pub fn modify_ext4(dir: &Path, img: &Path, seed: u64) {
    let new = dir.join(format!("new-{seed}"));
    fs::write(&new, noise(2 << 20, seed)).expect("write");
    let log = dir.join(format!("log-{seed}"));
    fs::write(&log, format!("boot ok {seed}\n").repeat(30_000)).expect("write");
    let cmds = dir.join(format!("cmds-{seed}"));
    fs::write(
        &cmds,
        format!(
            "write {} home/user/new{seed}.bin\nrm var/log/syslog\nwrite {} var/log/syslog\nrm etc/conf{}\n",
            new.display(),
            log.display(),
            seed % 40
        ),
    )
    .expect("write");
    sh(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(img));
}
