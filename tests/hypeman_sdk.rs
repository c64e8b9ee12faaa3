//! hypeman's own clients against `stasis serve`: `tools/hypeman-sdk.py` drives the
//! server with the official Python SDK (PyPI `hypeman` 0.28, installed by `.ci/run`),
//! strictly validating every response into the SDK's models and checking every error
//! class. This test sets up the repository, the instances and the tokens it expects,
//! and runs it; one snapshot schedule runs in real time (interval 1m).
//!
//! Without the SDK this test fails, unless `STASIS_SKIP_HYPEMAN_SDK=1` is set.

mod common;
#[path = "common/serve.rs"]
mod serve;
use common::{noise, stasis_ok};
use serve::Serve;

use std::os::unix::fs::FileExt;
use std::process::Command;

fn write_sparse(path: &std::path::Path, size: u64, seed: u64) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(size).expect("size");
    f.write_all_at(&noise(300_000, seed), 4096).expect("write");
}

#[test]
fn hypemans_python_sdk_drives_every_snapshot_and_schedule_method() {
    let have = Command::new("python3")
        .args(["-c", "import hypeman"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("STASIS_SKIP_HYPEMAN_SDK").is_some(),
            "hypeman's SDK is not installed (`pip install hypeman==0.28.0`, as .ci/run does); \
             set STASIS_SKIP_HYPEMAN_SDK=1 to skip this test"
        );
        eprintln!("skipped: no hypeman SDK");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files");
    stasis_ok(&repo, &["init"]);
    write_sparse(&files.join("web.img"), 4 << 20, 1);
    write_sparse(&files.join("web.mem"), 2 << 20, 2);
    write_sparse(&files.join("batch.img"), 1 << 20, 3);
    let log = files.join("hooks.log");
    let hook = |what: &str| {
        format!(
            "echo \"{what} $STASIS_VM $STASIS_SNAPSHOT\" >> {}",
            log.display()
        )
    };
    let path = |n: &str| files.join(n).display().to_string();
    stasis_ok(
        &repo,
        &[
            "instance",
            "add",
            "web",
            "--hypervisor",
            "firecracker",
            "--disk",
            &format!("root={}", path("web.img")),
            "--memory",
            &format!("mem={}", path("web.mem")),
            "--pre-snapshot",
            &hook("pre-snapshot"),
            "--post-snapshot",
            &hook("post-snapshot"),
            "--pre-restore",
            &hook("pre-restore"),
            "--post-restore",
            &hook("post-restore"),
        ],
    );
    stasis_ok(
        &repo,
        &[
            "instance",
            "add",
            "batch",
            "--hypervisor",
            "qemu",
            "--disk",
            &format!("root={}", path("batch.img")),
        ],
    );
    let token = |args: &[&str]| {
        let mut a = vec!["token", "create"];
        a.extend_from_slice(args);
        stasis_ok(&repo, &a).trim().to_string()
    };
    let (rw, ro, other) = (
        token(&["--tenant", "default"]),
        token(&["--tenant", "default", "--read-only"]),
        token(&["--tenant", "acme"]),
    );

    let root = format!("default={}", files.display());
    let server = Serve::start(&repo, &["--payload-root", &root]);
    let base = server.base.clone();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/hypeman-sdk.py"))
        .env("HYPEMAN_BASE_URL", &base)
        .env("HYPEMAN_API_KEY", &rw)
        .env("STASIS_RO_KEY", &ro)
        .env("STASIS_OTHER_KEY", &other)
        .output()
        .expect("run tools/hypeman-sdk.py");
    let log = server.stop();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{text}\nserver log:\n{}",
        log.join("\n")
    );
    let summary = text
        .lines()
        .rfind(|l| l.starts_with("hypeman-sdk: "))
        .unwrap_or_default();
    assert!(summary.ends_with("checks passed"), "{text}");
    eprintln!("{summary}");
    // The instance's hooks ran around each snapshot and restore it was asked for.
    let hooks = std::fs::read_to_string(files.join("hooks.log")).expect("hook log");
    for h in [
        "pre-snapshot web sdk-standby",
        "post-snapshot web sdk-standby",
        "pre-restore web sdk-standby",
        "post-restore web sdk-stopped",
    ] {
        assert!(hooks.contains(h), "{h} not in:\n{hooks}");
    }
}
