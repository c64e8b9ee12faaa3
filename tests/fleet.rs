//! The binary with its blocks on a real Garage cluster (3 nodes, replication factor 3):
//! `init --store s3://...`, create, restore, mount, verify, delete and gc work as on a
//! local directory; the cache is bounded, can be cleared and read cold again; `du`
//! shows it; and a second host's `init` on the same store is refused without a shared
//! catalog. With the catalog on a real PostgreSQL, two hosts share one repository.

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

/// A snapshot's files: name and bytes, by name.
type Files = Vec<(String, Vec<u8>)>;

/// Restore `snap` on `repo` into a new directory under `dir`; its files by name.
fn restored(g: &Garage, repo: &Path, dir: &Path, snap: &str) -> Files {
    let to = dir.join(format!(
        "restore-{}-{}",
        repo.file_name().and_then(|n| n.to_str()).unwrap_or("repo"),
        snap.replace('/', "-")
    ));
    ok(g, repo, &["restore", snap, to.to_str().expect("utf8")]);
    let mut files: Files = fs::read_dir(&to)
        .expect("restored dir")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).expect("read"))
        })
        .filter(|(n, _)| !n.starts_with('.'))
        .collect();
    files.sort();
    files
}

/// `stasis` with the cluster's variables and more, started (not waited for).
fn spawn(g: &Garage, repo: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(STASIS_BIN)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("STASIS_REPO")
        .envs(g.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run stasis")
}

/// Wait (bounded) until `path` exists: a stalled process says it reached its step.
fn wait_for(path: &Path, child: &mut std::process::Child) {
    for _ in 0..6000 {
        if path.exists() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the process exited ({st}) before its stall");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} never appeared", path.display());
}

/// A running `stasis serve`, stopped when dropped.
struct Served {
    child: std::process::Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `stasis serve` on `repo`, once it says where it listens (a bounded wait).
fn serve(g: &Garage, repo: &Path) -> Served {
    use std::io::BufRead;
    let mut child = spawn(
        g,
        repo,
        &["serve", "--listen", "127.0.0.1:0"],
        &[("STASIS_LOG", "info")],
    );
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut served = Served {
        child,
        base: String::new(),
    };
    while served.base.is_empty() {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("stasis serve said where it listens");
        if let Some(addr) = line.split("http://").nth(1) {
            served.base = format!("http://{}", addr.trim());
        }
    }
    served
}

/// GET `url` with a bearer token: the status and the body as JSON (null if none).
fn get_as(url: &str, token: &str) -> (u16, serde_json::Value) {
    let r = match ureq::get(url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body).expect("read the body");
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Two hosts (two repository directories, caches of their own) share one repository:
/// blocks on Garage, the catalog on PostgreSQL. What A creates, B lists, restores,
/// mounts and forks; B's commit of the fork is A's to see; B's sibling image adds only
/// its own blocks; creates on both at once with a gc on A and a reader on B's mount
/// lose nothing; a restarted PostgreSQL fails a create cleanly; a stopped Garage node
/// stops neither an ingest nor the mount's reads.
#[test]
fn two_hosts_share_one_repository() {
    let Some(g) = Garage::start(3) else { return };
    let Some(pg) = stasis_catalog::testing::Postgres::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let url = g.url("two-hosts");
    let catalog = pg.database();
    let (a, b) = (dir.join("host-a"), dir.join("host-b"));
    let init = |repo: &Path, more: &[&str]| {
        let mut args = vec!["init", "--store", &url, "--catalog", &catalog];
        args.extend_from_slice(more);
        run(&g, repo, &args)
    };
    let out = init(&a, &["--cache-size", "256MiB", "--block-size", "64KiB"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("initialised"));
    let out = init(&b, &["--cache-size", "256MiB"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("joined"), "{said}");
    // Joining with other settings, or through a catalog that does not know the store,
    // is refused; nothing is written for that host.
    let out = init(&dir.join("host-c"), &["--block-size", "16KiB"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("other settings"));
    assert!(!dir.join("host-c/repository.json").exists());
    let elsewhere = pg.database();
    let out = run(
        &g,
        &dir.join("host-d"),
        &["init", "--store", &url, "--catalog", &elsewhere],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not know"));

    // A: base, child1 and child2 of a real ext4 image, and a memory snapshot.
    let img = make_ext4(dir, "rootfs.ext4", "96M");
    let disk = img.to_str().expect("utf8");
    let mut want: Vec<(String, Files)> = Vec::new();
    for (i, name) in ["base", "child1", "child2"].into_iter().enumerate() {
        if i > 0 {
            modify_ext4(dir, &img, i as u64);
        }
        ok(&g, &a, &["create", "web", name, "--disk", disk]);
        let bytes = fs::read(&img).expect("read");
        want.push((format!("web/{name}"), vec![("rootfs.ext4".into(), bytes)]));
    }
    let child1 = want[1].1[0].1.clone();
    let child2 = want[2].1[0].1.clone();
    let mem = dir.join("mem");
    let mut mem_bytes = common::noise(8 << 20, 5);
    mem_bytes.resize(24 << 20, 0);
    fs::write(&mem, &mem_bytes).expect("write");
    ok(
        &g,
        &a,
        &[
            "create",
            "vm-mem",
            "standby",
            "--memory",
            mem.to_str().expect("utf8"),
        ],
    );
    want.push(("vm-mem/standby".into(), vec![("mem".into(), mem_bytes)]));

    // B lists them and restores each byte-identical.
    let listed = json(&g, &b, &["list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    for (snap, files) in &want {
        assert!(restored(&g, &b, dir, snap) == *files, "{snap} on host B");
    }

    // B mounts and reads them, forks child1 as a qcow2 overlay on its mount, writes
    // through it and commits it back as a child; A sees the child and restores it.
    let point = dir.join("mnt-b");
    let m = Mount::start_with_env(&b, &point, &g.vars);
    assert!(fs::read(point.join("vms/web/child2/rootfs.ext4")).expect("read") == child2);
    let clone = dir.join("clone");
    ok(
        &g,
        &b,
        &["fork", "web/child1", "web-b", clone.to_str().expect("utf8")],
    );
    let overlay = clone.join("rootfs.ext4.qcow2");
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 1048576 65536"])
        .arg(&overlay)
        .output()
        .expect("qemu-io (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut forked = child1.clone();
    forked[1 << 20..(1 << 20) + 65536].fill(0xab);
    let child1_id = json(&g, &a, &["show", "web/child1"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    ok(
        &g,
        &b,
        &[
            "create",
            "web-b",
            "first",
            "--parent",
            &child1_id,
            "--disk",
            overlay.to_str().expect("utf8"),
        ],
    );
    let seen = json(&g, &a, &["show", "web-b/first"]);
    assert_eq!(seen["parent_id"], child1_id.as_str(), "{seen}");
    assert!(restored(&g, &a, dir, "web-b/first") == vec![("rootfs.ext4".into(), forked)]);

    // A sibling image ingested on B adds to the bucket only what it does not share.
    let sibling = dir.join("sibling.ext4");
    fs::write(&sibling, &child2).expect("write");
    modify_ext4(dir, &sibling, 9);
    let before = objects(&g, &b);
    ok(
        &g,
        &b,
        &[
            "create",
            "sib",
            "base",
            "--disk",
            sibling.to_str().expect("utf8"),
        ],
    );
    let grown = objects(&g, &b) - before;
    eprintln!(
        "sibling of {} MiB added {grown} bytes to the bucket",
        child2.len() >> 20
    );
    // Its unique data: 2 MiB of random bytes, a compressible log, a few metadata blocks.
    assert!(
        (2 << 20..4 << 20).contains(&grown),
        "the sibling added {grown} bytes"
    );

    // Creates on A and B at once, a gc on A (of a deleted snapshot's blocks) and a
    // reader on B's mount: nothing is lost, both verify clean.
    ok(&g, &a, &["delete", "vm-mem/standby"]);
    let (ia, ib) = (dir.join("ia.ext4"), dir.join("ib.ext4"));
    for (p, seed) in [(&ia, 11), (&ib, 12)] {
        fs::write(p, &child2).expect("write");
        modify_ext4(dir, p, seed);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut n = 0;
            while n == 0 || !done.load(std::sync::atomic::Ordering::SeqCst) {
                let got = fs::read(point.join("vms/web/child2/rootfs.ext4")).expect("read");
                assert!(
                    got == child2,
                    "the mount read wrong bytes during the writes"
                );
                n += 1;
            }
            n
        });
        let jobs = [
            spawn(
                &g,
                &a,
                &["create", "web", "c-a", "--disk", ia.to_str().expect("utf8")],
                &[],
            ),
            spawn(
                &g,
                &b,
                &["create", "web", "c-b", "--disk", ib.to_str().expect("utf8")],
                &[],
            ),
            spawn(&g, &a, &["gc"], &[]),
        ];
        for j in jobs {
            let out = j.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().expect("reader")
    });
    eprintln!("{reads} reads through B's mount during the creates and gc");
    // (A payload is named after its file.)
    assert!(
        restored(&g, &a, dir, "web/c-b") == vec![("ib.ext4".into(), fs::read(&ib).expect("read"))]
    );
    assert!(
        restored(&g, &b, dir, "web/c-a") == vec![("ia.ext4".into(), fs::read(&ia).expect("read"))]
    );
    for host in [&a, &b] {
        ok(&g, host, &["verify", "--read-data"]);
    }

    // Tokens and tenants are the fleet's: tokens made on A authenticate at B's server,
    // with their tenant's view; one revoked on A is refused by B at once.
    let reader = ok(
        &g,
        &a,
        &["token", "create", "--tenant", "default", "--read-only"],
    )
    .trim()
    .to_string();
    let stranger = ok(&g, &a, &["token", "create", "--tenant", "acme"])
        .trim()
        .to_string();
    let server = serve(&g, &b);
    let base = server.base.clone();
    let (status, list) = get_as(&format!("{base}/snapshots"), &reader);
    assert_eq!(status, 200, "{list}");
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|s| s["name"] == "c-a")),
        "A's snapshot in B's answer: {list}"
    );
    let (status, list) = get_as(&format!("{base}/snapshots"), &stranger);
    assert_eq!(
        (status, list.as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );
    let (status, _) = get_as(&format!("{base}/snapshots/{child1_id}"), &stranger);
    assert_eq!(
        status, 404,
        "another tenant's snapshot does not exist for acme"
    );
    let tokens = json(&g, &a, &["token", "list"]);
    let reader_id = tokens
        .as_array()
        .and_then(|t| t.iter().find(|t| t["read_only"] == true))
        .and_then(|t| t["id"].as_str())
        .expect("the read-only token's id")
        .to_string();
    ok(&g, &a, &["token", "revoke", &reader_id]);
    let (status, _) = get_as(&format!("{base}/snapshots"), &reader);
    assert_eq!(status, 401, "a token revoked on A still works on B");
    drop(server);

    // One Garage node stopped (not the one the hosts talk to) during B's cold mount
    // reads: replication factor 3 answers from the other two.
    ok(&g, &b, &["cache", "clear"]);
    g.stop_node(3);
    assert!(fs::read(point.join("vms/web/child1/rootfs.ext4")).expect("read") == child1);
    g.restart_node(3);
    m.stop();

    if cfg!(feature = "faults") {
        let stall = dir.join("stall");
        let stalled = |g: &Garage, repo: &Path, name: &str, disk: &Path| {
            let at = format!("0:{}", stall.display());
            spawn(
                g,
                repo,
                &[
                    "create",
                    "web",
                    name,
                    "--disk",
                    disk.to_str().expect("utf8"),
                ],
                &[("STASIS_STALL_AT", &at)],
            )
        };
        // A Garage node stops in the middle of an ingest: it goes on. (Node 3 again:
        // a node started again takes a moment to be connected to the others, so
        // stopping another one right after could leave one of three.)
        let ic = dir.join("ic.ext4");
        fs::write(&ic, &child2).expect("write");
        modify_ext4(dir, &ic, 13);
        let mut c = stalled(&g, &a, "node-down", &ic);
        wait_for(&stall, &mut c);
        g.stop_node(3);
        fs::remove_file(&stall).expect("resume");
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        g.restart_node(3);
        assert!(
            restored(&g, &b, dir, "web/node-down")
                == vec![("ic.ext4".into(), fs::read(&ic).expect("read"))]
        );

        // A's create killed (SIGKILL) after its first upload: B never sees a snapshot,
        // and B's gc removes what it left in the bucket.
        modify_ext4(dir, &ic, 15);
        let c = spawn(
            &g,
            &a,
            &[
                "create",
                "web",
                "killed",
                "--disk",
                ic.to_str().expect("utf8"),
            ],
            &[("STASIS_KILL_AT", "1")],
        );
        let out = c.wait_with_output().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "the create was not killed"
        );
        let list = ok(&g, &b, &["list", "--all"]);
        assert!(!list.contains("killed"), "{list}");
        ok(&g, &b, &["gc"]);
        let unindexed = json(&g, &b, &["verify"])["unindexed_packs"]
            .as_array()
            .map(Vec::len);
        assert_eq!(unindexed, Some(0), "gc left the killed create's packs");

        // PostgreSQL restarts in the middle of a create: a clear error, no snapshot,
        // and what it uploaded is garbage for gc.
        modify_ext4(dir, &ic, 14);
        let mut c = stalled(&g, &a, "pg-cut", &ic);
        wait_for(&stall, &mut c);
        pg.restart();
        fs::remove_file(&stall).expect("resume");
        let out = c.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the create went on after losing its session"
        );
        assert!(err.contains("nothing was recorded"), "{err}");
        let list = ok(&g, &b, &["list"]);
        assert!(!list.contains("pg-cut"), "{list}");
        ok(&g, &b, &["gc"]);
        let unindexed = json(&g, &b, &["verify"])["unindexed_packs"]
            .as_array()
            .map(Vec::len);
        assert_eq!(unindexed, Some(0), "gc left the cut create's packs");
        ok(&g, &a, &["verify", "--read-data"]);
    }
}
