//! The binary with its blocks on a real Garage cluster (3 nodes, replication factor 3):
//! `init --store s3://...`, create, restore, mount, verify, delete and gc work as on a
//! local directory; the cache is bounded, can be cleared and read cold again; `du`
//! shows it; and a second host's `init` on the same store is refused without a shared
//! catalog.

mod common;
#[path = "common/mount.rs"]
mod mount;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{STASIS_BIN, make_ext4, modify_ext4, run_stasis_env, stasis_ok_env};
use mount::Mount;
use stasis_s3::testing::Garage;

/// `stasis --repo REPO ARGS...` with the cluster's `AWS_*` variables.
fn run(g: &Garage, repo: &Path, args: &[&str]) -> Output {
    run_stasis_env(repo, args, &g.vars)
}

fn ok(g: &Garage, repo: &Path, args: &[&str]) -> String {
    stasis_ok_env(repo, args, &g.vars)
}

fn json(g: &Garage, repo: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(g, repo, &all)).expect("json")
}

fn objects(g: &Garage, repo: &Path) -> u64 {
    let du = json(g, repo, &["du"]);
    du["pack_bytes"].as_u64().expect("pack bytes") + du["index_bytes"].as_u64().expect("index")
}

#[test]
fn a_repository_on_garage_works_like_a_local_one() {
    let Some(g) = Garage::start(3) else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let repo = dir.join("host-a");
    let url = g.url("fleet-a");
    let out = ok(
        &g,
        &repo,
        &["init", "--store", &url, "--cache-size", "64MiB"],
    );
    assert!(out.contains(&url), "{out}");
    assert!(repo.join("repository.json").exists());

    // Two snapshots of a real ext4 image.
    let img = make_ext4(dir, "rootfs.ext4", "96M");
    let base = fs::read(&img).expect("read");
    let disk = img.to_str().expect("utf8");
    ok(&g, &repo, &["create", "web", "base", "--disk", disk]);
    modify_ext4(dir, &img, 3);
    let child = fs::read(&img).expect("read");
    ok(&g, &repo, &["create", "web", "child", "--disk", disk]);

    // Restore both byte-identical, then again from an empty cache.
    for round in ["warm", "cold"] {
        for (snap, want) in [("web/base", &base), ("web/child", &child)] {
            let to = dir.join(format!("restore-{round}-{}", snap.replace('/', "-")));
            ok(&g, &repo, &["restore", snap, to.to_str().expect("utf8")]);
            assert!(
                fs::read(to.join("rootfs.ext4")).expect("restored") == *want,
                "{snap} restored differently ({round} cache)"
            );
        }
        let stats = json(&g, &repo, &["cache", "stats"]);
        assert!(stats["pieces"].as_u64() > Some(0), "{stats}");
        assert!(
            stats["bytes"].as_u64() <= Some(64 << 20),
            "over budget: {stats}"
        );
        if round == "warm" {
            ok(&g, &repo, &["cache", "clear"]);
            assert_eq!(json(&g, &repo, &["cache", "stats"])["pieces"], 0);
        }
    }
    let stats = json(&g, &repo, &["cache", "stats"]);
    assert!(stats["requests"].as_u64() > Some(0), "{stats}");
    assert!(ok(&g, &repo, &["du"]).contains("cache"));

    // The mount reads from the bucket through the cache.
    let point = dir.join("mnt");
    let m = Mount::start_with_env(&repo, &point, &g.vars);
    assert!(fs::read(point.join("vms/web/child/rootfs.ext4")).expect("mount read") == child);
    m.stop();

    ok(&g, &repo, &["verify", "--read-data"]);

    // Deleting the child and collecting garbage removes objects from the bucket.
    let before = objects(&g, &repo);
    ok(&g, &repo, &["delete", "web/child"]);
    ok(&g, &repo, &["gc"]);
    let after = objects(&g, &repo);
    assert!(after < before, "gc left {after} of {before} bytes");
    let to = dir.join("restore-after-gc");
    ok(
        &g,
        &repo,
        &["restore", "web/base", to.to_str().expect("utf8")],
    );
    assert!(fs::read(to.join("rootfs.ext4")).expect("restored") == base);

    // Creates killed (SIGKILL) at each of their first steps, uploads among them: no
    // snapshot appears, verify stays clean, and gc removes what they left in the bucket.
    if cfg!(feature = "faults") {
        let unindexed = || -> usize {
            json(&g, &repo, &["verify"])["unindexed_packs"]
                .as_array()
                .expect("unindexed packs")
                .len()
        };
        assert_eq!(unindexed(), 0);
        modify_ext4(dir, &img, 4);
        let mut killed = 0;
        for step in 0..6 {
            let name = format!("killed{step}");
            let out = Command::new(STASIS_BIN)
                .arg("--repo")
                .arg(&repo)
                .args(["create", "web", &name, "--disk", disk])
                .env_remove("STASIS_REPO")
                .env("STASIS_KILL_AT", step.to_string())
                .envs(g.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .expect("run stasis");
            use std::os::unix::process::ExitStatusExt;
            if out.status.signal() != Some(libc::SIGKILL) {
                // The create has fewer steps than this: it finished.
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
            killed += 1;
            let list = ok(&g, &repo, &["list"]);
            assert!(
                !list.contains(&name),
                "a killed create left a snapshot: {list}"
            );
            ok(&g, &repo, &["verify", "--read-data"]);
        }
        eprintln!("{killed} creates killed at their first steps");
        assert!(killed >= 2, "only {killed} kills");
        assert!(unindexed() > 0, "no create was killed after an upload");
        ok(&g, &repo, &["gc"]);
        assert_eq!(unindexed(), 0, "gc left packs of the killed creates");
        ok(&g, &repo, &["verify", "--read-data"]);
    }

    // A second host with a catalog of its own may not join: its gc would remove blocks
    // of the first host's snapshots.
    let out = run(&g, &dir.join("host-b"), &["init", "--store", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shared catalog"), "{err}");
    // A bad URL is a clear error.
    let out = run(
        &g,
        &dir.join("host-c"),
        &["init", "--store", "s3://No_Such"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bucket"));
}
