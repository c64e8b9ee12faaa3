//! End-to-end tests: the real `stasis` binary on real ext4 images.

mod common;
use common::{noise, sh};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stasis");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--repo")
            .arg(self.path("repo"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("STASIS_REPO")
            .env_remove("XDG_DATA_HOME")
            .output()
            .expect("run stasis")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "stasis {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn fails(&self, args: &[&str], needle: &str) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "stasis {args:?} should fail");
        assert!(
            err.contains(needle),
            "stasis {args:?}: expected {needle:?} in {err}"
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }
}

fn make_ext4(env: &Env, name: &str) -> PathBuf {
    common::make_ext4(env.dir.path(), name, "96M")
}

fn modify_ext4(env: &Env, img: &Path, seed: u64) {
    common::modify_ext4(env.dir.path(), img, seed)
}

/// A sparse diff layer of `new` over `old`: changed 4 KiB pages written, holes elsewhere.
fn diff_layer(old: &Path, new: &Path, out: &Path) -> usize {
    let a = fs::read(old).expect("read");
    let b = fs::read(new).expect("read");
    let f = File::create(out).expect("create");
    f.set_len(b.len() as u64).expect("len");
    let mut changed = 0;
    for (i, page) in b.chunks(4096).enumerate() {
        if a.get(i * 4096..i * 4096 + page.len()) != Some(page) {
            f.write_all_at(page, (i * 4096) as u64).expect("write");
            changed += 1;
        }
    }
    changed
}

fn same(a: &Path, b: &Path) -> bool {
    fs::read(a).expect("read a") == fs::read(b).expect("read b")
}

#[test]
fn ext4_images_snapshot_diff_restore_verify() {
    let env = Env::new();
    env.ok(&["init", "--block-size", "64KiB", "--compression", "zstd"]);
    let base = make_ext4(&env, "base.ext4");
    let out = env.ok(&[
        "create",
        "web",
        "base",
        "--disk",
        &format!("root={}", base.display()),
    ]);
    let base_id = out.lines().next().expect("id line").to_string();
    assert_eq!(base_id.len(), 24, "first line is the id: {out}");

    // A child from the modified image (full input, parent = the VM's current).
    let child = env.path("child.ext4");
    sh(Command::new("cp")
        .arg("--sparse=always")
        .arg(&base)
        .arg(&child));
    modify_ext4(&env, &child, 1);
    let c = env.json(&[
        "create",
        "web",
        "child",
        "--disk",
        &format!("root={}", child.display()),
    ]);
    assert_eq!(c["parent_id"], Value::String(base_id.clone()));
    assert!(c["is_current"].as_bool().expect("bool"));

    // A grandchild given as a sparse diff layer over the child.
    let grand = env.path("grand.ext4");
    sh(Command::new("cp")
        .arg("--sparse=always")
        .arg(&child)
        .arg(&grand));
    modify_ext4(&env, &grand, 2);
    let layer = env.path("grand.diff");
    let pages = diff_layer(&child, &grand, &layer);
    assert!(pages > 0);
    let g = env.json(&[
        "create",
        "web",
        "grand",
        "--parent",
        "web/child",
        "--diff",
        "--disk",
        &format!("root={}", layer.display()),
    ]);
    // The merged payload's allocated bytes cover its data, not just the layer's pages.
    let pl = &g["payloads"][0];
    assert!(
        pl["allocated"].as_u64() >= pl["data_bytes"].as_u64(),
        "{pl}"
    );
    assert!(
        pl["allocated"].as_u64().expect("u64") > pages as u64 * 4096,
        "{pl}"
    );
    // The diff added about what changed, not a whole image.
    let added = g["added_bytes"].as_u64().expect("added");
    assert!(
        added < (pages as u64 * 4096) * 2 + (1 << 20),
        "added {added} for {pages} pages"
    );

    for (snap, want) in [
        ("web/base", &base),
        ("web/child", &child),
        ("web/grand", &grand),
        ("web", &grand),
    ] {
        let dir = env.path(&format!("restore-{}", snap.replace('/', "-")));
        env.ok(&["restore", snap, dir.to_str().expect("utf8")]);
        assert!(same(&dir.join("root"), want), "{snap} restored differently");
    }
    // Restored files are sparse: far less allocated than the 96 MiB image.
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(env.path("restore-web-base/root")).expect("stat");
    assert_eq!(md.len(), 96 << 20);
    assert!(
        md.blocks() * 512 < 40 << 20,
        "allocated {}",
        md.blocks() * 512
    );
    // Restoring over existing files is refused without --force.
    env.fails(
        &[
            "restore",
            "web/base",
            env.path("restore-web-base").to_str().expect("utf8"),
        ],
        "exists",
    );
    env.ok(&[
        "restore",
        "--force",
        "web/base",
        env.path("restore-web-base").to_str().expect("utf8"),
    ]);

    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    assert_eq!(v["payloads"], 3);

    let du = env.json(&["du"]);
    assert_eq!(du["snapshots"], 3);
    assert!(du["dedup_ratio"].as_f64().expect("f64") > 2.0, "{du}");
    assert!(du["compression_ratio"].as_f64().expect("f64") > 1.0, "{du}");
    assert!(
        du["repository_bytes"].as_u64().expect("u64") < du["data_bytes"].as_u64().expect("u64") / 2
    );
    let list = env.json(&["list"]);
    assert_eq!(list.as_array().expect("array").len(), 3);
    let show = env.json(&["show", "web"]);
    assert_eq!(show["name"], "grand");
    assert_eq!(show["payloads"][0]["name"], "root");
    assert_eq!(show["payloads"][0]["role"], "disk");
}

#[test]
fn memory_and_state_payloads_keep_their_names() {
    let env = Env::new();
    env.ok(&["init"]);
    let mem = env.path("mem");
    let f = File::create(&mem).expect("create");
    f.set_len(8 << 20).expect("len");
    // Pages of a "guest": some repeated at other offsets, zero pages, holes.
    let page = noise(4096, 3);
    for (k, off) in [0u64, 1 << 20, 3 << 20, (5 << 20) + 4096]
        .into_iter()
        .enumerate()
    {
        f.write_all_at(&page, off).expect("write");
        f.write_all_at(&noise(4096, k as u64), off + 8192)
            .expect("write");
    }
    f.write_all_at(&[0u8; 8192], 6 << 20).expect("write");
    let vmstate = env.path("vmstate");
    fs::write(&vmstate, noise(70_000, 9)).expect("write");
    let empty = env.path("empty.json");
    fs::write(&empty, b"").expect("write");
    let one = env.path("one");
    fs::write(&one, b"x").expect("write");
    env.ok(&[
        "create",
        "fc1",
        "snap",
        "--memory",
        mem.to_str().expect("utf8"),
        "--state",
        vmstate.to_str().expect("utf8"),
        "--state",
        &format!("config.json={}", empty.display()),
        "--state",
        one.to_str().expect("utf8"),
    ]);
    let s = env.json(&["show", "fc1/snap"]);
    let names: Vec<&str> = s["payloads"]
        .as_array()
        .expect("arr")
        .iter()
        .map(|p| p["name"].as_str().expect("s"))
        .collect();
    assert_eq!(names, ["mem", "vmstate", "config.json", "one"]);
    assert_eq!(
        s["payloads"][0]["block_size"], 4096,
        "memory uses 4 KiB blocks by default"
    );
    let out = env.path("out");
    env.ok(&["restore", "fc1", out.to_str().expect("utf8")]);
    assert!(same(&out.join("mem"), &mem));
    assert!(same(&out.join("vmstate"), &vmstate));
    assert!(same(&out.join("config.json"), &empty));
    assert!(same(&out.join("one"), &one));
}

/// Pages like a guest's: 8-byte words, a third of them zero, the rest from a small range.
fn guest_pages(pages: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(pages * 4096);
    for _ in 0..pages * 512 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = if x.is_multiple_of(3) {
            0
        } else {
            x & 0x0000_ffff_ffff_f0f0
        };
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

#[test]
fn memory_children_store_changed_pages_as_deltas() {
    let env = Env::new();
    env.ok(&["init"]);
    let mem = env.path("mem");
    let mut bytes = guest_pages(1024, 5);
    fs::write(&mem, &bytes).expect("write");
    let m = format!("mem={}", mem.display());
    env.ok(&["create", "vm1", "t1", "--memory", &m]);
    let t1_added = env.json(&["show", "vm1/t1"])["added_bytes"]
        .as_u64()
        .expect("n");
    // The guest ran on: a few words changed in one page of ten.
    for p in (0..1024).step_by(10) {
        for k in [8usize, 800, 2000, 4000] {
            bytes[p * 4096 + k] ^= 0xa5;
        }
    }
    fs::write(&mem, &bytes).expect("write");
    let out = env.ok(&["create", "vm1", "t2", "--memory", &m]);
    assert!(
        out.contains("103 of 103 new blocks stored as deltas"),
        "{out}"
    );
    let t2 = env.json(&["show", "vm1/t2"]);
    let t2_added = t2["added_bytes"].as_u64().expect("n");
    // 103 changed pages whole would be about a tenth of t1; as deltas, far less.
    assert!(
        t2_added * 40 < t1_added,
        "t2 added {t2_added} bytes, t1 {t1_added}"
    );
    let out = env.path("out2");
    env.ok(&["restore", "vm1/t2", out.to_str().expect("utf8")]);
    assert!(same(&out.join("mem"), &mem));
    // The parent goes; its pages that t2's deltas are on stay.
    env.ok(&["delete", "vm1/t1"]);
    env.ok(&["gc"]);
    env.ok(&["verify", "--read-data"]);
    let out = env.path("out3");
    env.ok(&["restore", "vm1/t2", out.to_str().expect("utf8")]);
    assert!(same(&out.join("mem"), &mem));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let env = Env::new();
    env.fails(&["list"], "no repository");
    env.ok(&["init"]);
    env.fails(&["init"], "already exists");
    let img = env.path("disk.img");
    fs::write(&img, noise(200_000, 1)).expect("write");
    let disk = format!("root={}", img.display());
    env.ok(&["create", "vm1", "a", "--disk", &disk]);
    env.fails(
        &["create", "vm1", "a", "--disk", &disk],
        "already has a snapshot named",
    );
    env.fails(
        &["create", "vm1", "Bad_Name", "--disk", &disk],
        "invalid name",
    );
    env.fails(
        &["create", "vm1", "b", "--disk", "/nonexistent/disk.img"],
        "/nonexistent/disk.img",
    );
    env.fails(
        &[
            "create",
            "vm1",
            "b",
            "--disk",
            env.path("").to_str().expect("utf8"),
        ],
        "directory",
    );
    env.fails(&["create", "vm1", "b"], "nothing to store");
    env.fails(
        &["create", "vm1", "b", "--disk", &disk, "--state", &disk],
        "two payloads are named",
    );
    env.fails(
        &["create", "vm2", "b", "--diff", "--disk", &disk],
        "--diff needs a parent",
    );
    env.fails(
        &["create", "vm2", "b", "--parent", "vm1/a", "--disk", &disk],
        "belongs to VM vm1",
    );
    env.fails(
        &[
            "create", "vm1", "b", "--parent", "vm1/nope", "--disk", &disk,
        ],
        "no snapshot",
    );
    env.fails(
        &[
            "create",
            "vm1",
            "b",
            "--disk",
            &disk,
            "--compression",
            "zstd",
            "--level",
            "42",
        ],
        "out of range",
    );
    env.fails(
        &[
            "create",
            "vm1",
            "b",
            "--disk",
            &disk,
            "--compression",
            "brotli",
        ],
        "unknown compression",
    );
    env.fails(
        &[
            "create",
            "vm1",
            "b",
            "--parent",
            "vm1/a",
            "--diff",
            "--disk",
            &format!("other={}", img.display()),
        ],
        "no payload named",
    );
    env.fails(
        &["restore", "vm1/zzz", env.path("o").to_str().expect("utf8")],
        "no snapshot",
    );
    env.fails(&["init", "--block-size", "3000"], "power of two");
    let list = env.json(&["list"]);
    assert_eq!(
        list.as_array().expect("array").len(),
        1,
        "refused creates left nothing behind"
    );
    assert_eq!(env.json(&["verify"])["ok"], Value::Bool(true));
}

/// Inputs that are not what they claim: a clear error, or a correct snapshot; never a
/// panic, and never a partial snapshot left active.
#[test]
fn odd_inputs_give_a_clear_error_or_a_correct_snapshot() {
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    env.ok(&["init"]);
    let disk = |p: &Path| format!("root={}", p.display());
    // Devices that are not block devices, and a FIFO: refused.
    for dev in ["/dev/null", "/dev/zero", "/dev/urandom"] {
        env.fails(
            &["create", "vm", "dev", "--disk", &format!("root={dev}")],
            "not a regular file",
        );
    }
    let fifo = env.path("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    env.fails(
        &["create", "vm", "fifo", "--disk", &disk(&fifo)],
        "not a regular file",
    );
    // Empty, one byte, and an enormous sparse file with data only at its ends: stored
    // and restored exactly.
    let empty = env.path("empty");
    fs::write(&empty, b"").expect("write");
    let one = env.path("one");
    fs::write(&one, b"x").expect("write");
    let huge = env.path("huge");
    let f = File::create(&huge).expect("create");
    f.set_len(1 << 40).expect("1 TiB");
    f.write_all_at(b"head", 0).expect("write");
    f.write_all_at(b"tail", (1 << 40) - 4).expect("write");
    drop(f);
    for (name, p) in [("empty", &empty), ("one", &one), ("huge", &huge)] {
        env.ok(&["create", "vm", name, "--disk", &disk(p)]);
        let out = env.path(&format!("out-{name}"));
        env.ok(&[
            "restore",
            &format!("vm/{name}"),
            out.to_str().expect("utf8"),
        ]);
        let got = out.join("root");
        assert_eq!(
            fs::metadata(&got).expect("stat").len(),
            fs::metadata(p).expect("stat").len()
        );
        if name == "huge" {
            let g = File::open(&got).expect("open");
            let mut b = [0u8; 4];
            g.read_exact_at(&mut b, 0).expect("read");
            assert_eq!(&b, b"head");
            g.read_exact_at(&mut b, (1 << 40) - 4).expect("read");
            assert_eq!(&b, b"tail");
            use std::os::unix::fs::MetadataExt;
            assert!(
                fs::metadata(&got).expect("stat").blocks() < 4096,
                "restored sparse"
            );
        } else {
            assert!(same(&got, p), "{name}");
        }
    }
    // A file that shrinks while it is read: whatever the timing, either a clear error
    // and no snapshot, or a snapshot that restores to the file before or after.
    let big = env.path("shrinks");
    let full = noise(64 << 20, 3);
    fs::write(&big, &full).expect("write");
    let child = Command::new(BIN)
        .arg("--repo")
        .arg(env.path("repo"))
        .args(["create", "vm", "shrinks", "--disk", &disk(&big)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let f = fs::OpenOptions::new().write(true).open(&big).expect("open");
    f.set_len(1 << 20).expect("shrink");
    drop(f);
    let out = child.wait_with_output().expect("wait");
    let listed = env.json(&["list", "--vm", "vm"]);
    let present = listed
        .as_array()
        .expect("array")
        .iter()
        .any(|s| s["name"] == "shrinks");
    if out.status.success() {
        assert!(present);
        let o = env.path("out-shrinks");
        env.ok(&["restore", "vm/shrinks", o.to_str().expect("utf8")]);
        let got = fs::read(o.join("root")).expect("read");
        assert!(
            got == full || got == full[..1 << 20],
            "restores to a whole version"
        );
    } else {
        assert!(!present, "a failed create leaves no snapshot");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("shrank") || err.contains("changed"), "{err}");
    }
    // An unreadable file. Root reads everything, so as root (CI) the create runs as
    // `nobody`, with the repository handed to it.
    let secret = env.path("secret");
    fs::write(&secret, b"x").expect("write");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).expect("chmod");
    let args = ["create", "vm", "secret", "--disk", &disk(&secret)];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        env.fails(&args, "ermission");
    } else {
        const NOBODY: u32 = 65534;
        fn chown_tree(p: &Path) {
            std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
            if fs::symlink_metadata(p).expect("stat").is_dir() {
                for e in fs::read_dir(p).expect("ls") {
                    chown_tree(&e.expect("entry").path());
                }
            }
        }
        chown_tree(&env.path("repo"));
        fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        // nobody may not be able to reach the build's own binary (a clone in a private
        // directory): it runs a copy beside the repository.
        let bin = env.path("stasis-bin");
        fs::copy(BIN, &bin).expect("copy the binary");
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
        use std::os::unix::process::CommandExt;
        let out = Command::new(&bin)
            .arg("--repo")
            .arg(env.path("repo"))
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("ermission"), "{err}");
    }
    let names = env.json(&["list"]);
    assert!(
        names
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s["name"] != "secret")),
        "{names}"
    );
    assert_eq!(
        env.json(&["verify", "--read-data"])["ok"],
        Value::Bool(true)
    );
}

#[test]
fn corrupt_packs_are_reported_never_restored() {
    let env = Env::new();
    env.ok(&["init", "--compression", "none"]);
    let img = env.path("disk.img");
    let data = noise(1 << 20, 5);
    fs::write(&img, &data).expect("write");
    env.ok(&["create", "vm1", "a", "--disk", img.to_str().expect("utf8")]);
    // Flip one byte in the block data of the data pack (the largest; tree nodes have
    // their own small pack).
    let pack = walk(&env.path("repo/store/packs"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = fs::read(&pack).expect("read");
    bytes[4096 + 100] ^= 0x40;
    fs::write(&pack, &bytes).expect("write");
    let out = env.run(&["verify", "--read-data"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("PROBLEM"));
    assert!(
        report.contains("vm1/a") && report.contains("is corrupt"),
        "names the snapshot that lost a block: {report}"
    );
    env.fails(
        &["restore", "vm1/a", env.path("out").to_str().expect("utf8")],
        "checksum",
    );
    // The snapshot is marked error, with the reason on its timeline.
    let s = env.json(&["show", "vm1/a"]);
    assert_eq!(s["status"], "error");
    let log = env.json(&["log", "vm1/a"]);
    assert!(
        log.as_array()
            .expect("arr")
            .iter()
            .any(|e| e["action"] == "error")
    );
    // Putting the pack back makes a full check pass and the snapshot active again.
    bytes[4096 + 100] ^= 0x40;
    fs::write(&pack, &bytes).expect("write");
    env.ok(&["verify", "--read-data"]);
    assert_eq!(env.json(&["show", "vm1/a"])["status"], "active");
}

#[test]
fn default_repository_is_created_on_first_use() {
    let env = Env::new();
    let img = env.path("d");
    fs::write(&img, noise(100_000, 2)).expect("write");
    let out = Command::new(BIN)
        .args(["create", "vm", "first", "--disk"])
        .arg(&img)
        .env("HOME", env.dir.path())
        .env_remove("STASIS_REPO")
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.path(".local/share/stasis/store/config").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("readdir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn tree_delete_revert_log_tag_and_filters() {
    let env = Env::new();
    env.ok(&["init"]);
    let img = env.path("d.img");
    let mut data = noise(400_000, 11);
    fs::write(&img, &data).expect("write");
    let disk = format!("root={}", img.display());
    env.ok(&[
        "create",
        "web",
        "base",
        "--disk",
        &disk,
        "--tag",
        "env=prod",
        "--kind",
        "standby",
        "--hypervisor",
        "firecracker",
        "--expires",
        "2001-01-01",
    ]);
    data[100_000..140_000].copy_from_slice(&noise(40_000, 12));
    fs::write(&img, &data).expect("write");
    env.ok(&[
        "create",
        "web",
        "day2",
        "--disk",
        &disk,
        "--quiesced",
        "--power-state",
        "powered_off",
        "--description",
        "after upgrade",
    ]);
    env.ok(&["create", "web", "day3", "--disk", &disk]);
    env.ok(&["revert", "web/day2"]);
    let alt = env.json(&["create", "web", "alt", "--disk", &disk]);
    assert_eq!(
        alt["parent_id"],
        env.json(&["show", "web/day2"])["id"],
        "after revert, create branches from day2"
    );

    // The record uses the API's names and values.
    let base = env.json(&["show", "web/base"]);
    assert_eq!(base["kind"], "Standby");
    assert_eq!(base["source_hypervisor"], "firecracker");
    assert_eq!(base["tags"]["env"], "prod");
    assert_eq!(base["status"], "active");
    assert_eq!(base["compression"]["algorithm"], "zstd");
    assert_eq!(base["compression_state"], "compressed");
    assert_eq!(base["expires_at"], "2001-01-01T00:00:00Z");
    let day2 = env.json(&["show", "web/day2"]);
    assert_eq!(day2["quiesced"], true);
    assert_eq!(day2["power_state"], "powered_off");
    assert_eq!(day2["description"], "after upgrade");
    assert_eq!(day2["includes_memory"], false);
    assert!(
        day2["added_bytes"].as_u64().expect("u64") < 200_000,
        "a child adds only what changed"
    );

    let tree = env.ok(&["tree", "web"]);
    assert!(
        tree.contains("├─ day3") && tree.contains("└─ alt *"),
        "{tree}"
    );
    assert_eq!(
        env.json(&["list", "--tag", "env=prod"])
            .as_array()
            .expect("arr")
            .len(),
        1
    );
    assert_eq!(
        env.json(&["list", "--kind", "STOPPED"])
            .as_array()
            .expect("arr")
            .len(),
        3
    );
    assert_eq!(
        env.json(&["list", "--hypervisor", "qemu"])
            .as_array()
            .expect("arr")
            .len(),
        0
    );
    assert_eq!(
        env.json(&["list", "--expired"])
            .as_array()
            .expect("arr")
            .len(),
        1
    );
    let by_added = env.json(&["list", "--sort", "added_bytes", "--limit", "1"]);
    assert_eq!(
        by_added[0]["name"], "base",
        "the stale report puts the biggest adder first"
    );

    env.ok(&["tag", "web/day3", "team=infra", "owner=a@b.c"]);
    env.ok(&["tag", "web/day3", "--remove", "owner"]);
    assert_eq!(
        env.json(&["show", "web/day3"])["tags"],
        serde_json::json!({"team": "infra"})
    );
    env.fails(&["tag", "web/day3", "bad key!=x"], "invalid tag key");

    // Deleting the middle keeps both children readable and re-parents them.
    let before = env.path("before");
    env.ok(&["restore", "web/day3", before.to_str().expect("utf8")]);
    env.ok(&["delete", "web/day2"]);
    let day3 = env.json(&["show", "web/day3"]);
    assert_eq!(day3["parent_id"], base["id"]);
    let after = env.path("after");
    env.ok(&["restore", "web/day3", after.to_str().expect("utf8")]);
    assert!(same(&before.join("root"), &after.join("root")));
    assert!(same(&after.join("root"), &img));
    let log: Vec<String> = env
        .json(&["log", day2["id"].as_str().expect("id")])
        .as_array()
        .expect("arr")
        .iter()
        .map(|e| e["action"].as_str().expect("s").to_string())
        .collect();
    assert_eq!(
        log,
        [
            "created",
            "became_current",
            "became_current",
            "consolidating",
            "deleted"
        ]
    );
    assert_eq!(env.json(&["list"]).as_array().expect("arr").len(), 3);
    assert_eq!(
        env.json(&["list", "--all"]).as_array().expect("arr").len(),
        4
    );
    env.fails(&["revert", "web/day2"], "no snapshot");

    // Expired leaves: base has children, so nothing goes until they do.
    assert_eq!(
        env.json(&["delete", "--expired"])["deleted"]
            .as_array()
            .expect("arr")
            .len(),
        0
    );
    env.ok(&["delete", "--recursive", "web/base"]);
    assert_eq!(env.json(&["list"]).as_array().expect("arr").len(), 0);
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn two_creators_and_a_lister_at_once() {
    let env = Env::new();
    env.ok(&["init"]);
    let img = env.path("d.img");
    fs::write(&img, noise(200_000, 3)).expect("write");
    let disk = format!("root={}", img.display());
    std::thread::scope(|s| {
        // Both creators start in the same new VM, so their first creates race to make it.
        let creators: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|p| {
                let (env, disk) = (&env, &disk);
                s.spawn(move || {
                    for i in 0..10 {
                        env.ok(&["create", "vm", &format!("{p}{i}"), "--disk", disk]);
                    }
                })
            })
            .collect();
        let lister = s.spawn(|| {
            for _ in 0..30 {
                let list = env.json(&["list"]);
                assert!(list.is_array());
                env.ok(&["tree"]);
            }
        });
        for c in creators {
            c.join().expect("creator");
        }
        lister.join().expect("lister");
    });
    assert_eq!(env.json(&["list"]).as_array().expect("arr").len(), 20);
    let current: Vec<Value> = env
        .json(&["list"])
        .as_array()
        .expect("arr")
        .iter()
        .filter(|s| s["is_current"] == true)
        .cloned()
        .collect();
    assert_eq!(current.len(), 1, "one current snapshot per VM");
    env.ok(&["verify", "--read-data"]);
}

/// A 10,000-deep chain works in every command (nothing recurses). The chain's rows are
/// added through the catalog library (reusing one real payload) to keep the test fast.
#[test]
fn ten_thousand_deep_chain_works_everywhere() {
    let env = Env::new();
    env.ok(&["init"]);
    let img = env.path("d.img");
    fs::write(&img, noise(150_000, 4)).expect("write");
    let first = env.json(&[
        "create",
        "deep",
        "d0",
        "--disk",
        img.to_str().expect("utf8"),
    ]);
    {
        let mut cat = stasis_catalog::Catalog::open(&env.path("repo/catalog.db")).expect("catalog");
        cat.relax_durability().expect("relax");
        let payload = cat
            .payloads(first["id"].as_str().expect("id"))
            .expect("payloads")
            .remove(0);
        let mut parent = first["id"].as_str().map(String::from);
        for i in 1..10_000 {
            let s = cat
                .create(&stasis_catalog::NewSnapshot {
                    parent_id: parent.take(),
                    ..stasis_catalog::NewSnapshot::new(
                        "deep",
                        format!("d{i}"),
                        "test",
                        vec![stasis_catalog::NewPayload {
                            name: payload.name.clone(),
                            role: payload.role,
                            allocated: payload.allocated,
                            data_bytes: payload.data_bytes,
                            manifest: payload.manifest,
                        }],
                    )
                })
                .expect("create");
            parent = Some(s.id);
        }
    }
    let tree = env.ok(&["tree", "deep"]);
    assert_eq!(
        tree.lines().count(),
        10_001,
        "one line per snapshot plus the VM"
    );
    assert!(
        tree.lines().all(|l| l.len() < 200),
        "a chain does not indent"
    );
    assert_eq!(
        env.json(&["tree", "--", "deep"])
            .as_array()
            .expect("arr")
            .len(),
        10_000
    );
    assert_eq!(
        env.json(&["list", "--vm", "deep"])
            .as_array()
            .expect("arr")
            .len(),
        10_000
    );
    assert_eq!(env.json(&["show", "deep"])["name"], "d9999");
    env.ok(&["log", "deep/d5000"]);
    env.ok(&["delete", "deep/d5000"]);
    assert_eq!(
        env.json(&["show", "deep/d5001"])["parent_id"],
        env.json(&["show", "deep/d4999"])["id"]
    );
    env.ok(&["revert", "deep/d1"]);
    env.ok(&["du"]);
    env.ok(&["verify"]);
    let out = env.path("out");
    env.ok(&["restore", "deep/d9999", out.to_str().expect("utf8")]);
    assert!(same(&out.join("d.img"), &img));
    env.ok(&["delete", "--recursive", "deep/d0"]);
    assert_eq!(
        env.json(&["list", "--vm", "deep"])
            .as_array()
            .expect("arr")
            .len(),
        0
    );
}

/// An instance registered with its files and hooks is snapshotted by name: the
/// pre-snapshot hook runs first (here it writes the memory file) with the VM, snapshot,
/// kind and hypervisor in its environment, then the files are stored, then the
/// post-snapshot hook; a failing hook records nothing, and the post-snapshot hook runs
/// even when storing failed (so the VM is resumed).
#[test]
fn instances_are_snapshotted_by_name_between_their_hooks() {
    let env = Env::new();
    let img = make_ext4(&env, "root.ext4");
    let mem = env.path("guest.mem");
    let log = env.path("hooks.log");
    let (img_s, mem_s, log_s) = (
        img.to_str().expect("utf8"),
        mem.to_str().expect("utf8"),
        log.to_str().expect("utf8"),
    );
    let pre = format!(
        "echo \"pre $STASIS_VM $STASIS_SNAPSHOT $STASIS_KIND $STASIS_HYPERVISOR $STASIS_TENANT\" >> {log_s}; \
         head -c 1048576 /dev/urandom > {mem_s}"
    );
    let post = format!("echo \"post $STASIS_SNAPSHOT\" >> {log_s}");
    env.ok(&["init"]);
    let added = env.json(&[
        "instance",
        "add",
        "web",
        "--hypervisor",
        "qemu",
        "--disk",
        &format!("rootfs={img_s}"),
        "--memory",
        mem_s,
        "--pre-snapshot",
        &pre,
        "--post-snapshot",
        &post,
    ]);
    assert_eq!(added["vm"]["name"], "web");
    assert_eq!(added["files"][1]["name"], "guest.mem");
    assert_eq!(added["files"][1]["role"], "memory");
    assert!(!mem.exists(), "registering touches no file");
    env.fails(
        &[
            "instance",
            "add",
            "web",
            "--hypervisor",
            "qemu",
            "--disk",
            img_s,
        ],
        "an instance already",
    );
    env.fails(
        &[
            "instance",
            "add",
            "x",
            "--hypervisor",
            "nope",
            "--disk",
            img_s,
        ],
        "hypervisor",
    );
    env.fails(
        &["instance", "add", "x", "--hypervisor", "qemu"],
        "at least one file",
    );
    let listed = env.ok(&["instance", "list"]);
    assert!(
        listed.contains("web") && listed.contains("rootfs, guest.mem"),
        "{listed}"
    );

    // By name: the hooks around it, the files stored, the instance's hypervisor.
    let snap = env.json(&["create", "web", "s1"]);
    assert_eq!(snap["kind"], "Standby");
    assert_eq!(snap["source_hypervisor"], "qemu");
    let names: Vec<&str> = snap["payloads"]
        .as_array()
        .expect("payloads")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["rootfs", "guest.mem"]);
    assert_eq!(
        fs::read_to_string(&log).expect("log"),
        "pre web s1 Standby qemu default\npost s1\n"
    );
    let out = env.path("out");
    env.ok(&["restore", "web/s1", out.to_str().expect("utf8")]);
    assert!(same(&out.join("rootfs"), &img));
    assert!(same(&out.join("guest.mem"), &mem));

    // A failing pre-snapshot hook: nothing stored, nothing recorded, nothing else run.
    fs::remove_file(&log).expect("rm");
    env.ok(&[
        "instance",
        "add",
        "paused",
        "--hypervisor",
        "firecracker",
        "--disk",
        img_s,
        "--pre-snapshot",
        &format!("echo cannot pause >&2; echo pre >> {log_s}; exit 7"),
        "--post-snapshot",
        &format!("echo post >> {log_s}"),
    ]);
    env.fails(
        &["create", "paused", "s1"],
        "pre-snapshot hook failed (exit status: 7): cannot pause",
    );
    assert_eq!(fs::read_to_string(&log).expect("log"), "pre\n");
    // A failing post-snapshot hook: the blocks are stored, nothing is recorded.
    env.ok(&["instance", "remove", "paused"]);
    env.ok(&[
        "instance",
        "add",
        "paused",
        "--hypervisor",
        "firecracker",
        "--disk",
        img_s,
        "--post-snapshot",
        "exit 9",
    ]);
    env.fails(&["create", "paused", "s2"], "post-snapshot hook failed");
    // A file that is not there: the post-snapshot hook still runs (the VM resumes).
    fs::remove_file(&log).expect("rm");
    let gone = env.path("gone.img");
    env.ok(&[
        "instance",
        "add",
        "lost",
        "--hypervisor",
        "qemu",
        "--disk",
        gone.to_str().expect("utf8"),
        "--post-snapshot",
        &format!("echo post >> {log_s}"),
    ]);
    env.fails(&["create", "lost", "s1"], "gone.img");
    assert_eq!(fs::read_to_string(&log).expect("log"), "post\n");
    let all = env.json(&["list", "--all"]);
    let vms: Vec<&str> = all
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["source_instance_name"].as_str())
        .collect();
    assert_eq!(vms, ["web"], "only web's snapshot was recorded");
    env.ok(&["verify"]);

    // Removed, the instance is gone and its snapshots stay; without files, a VM that
    // is no instance has nothing to store.
    env.ok(&["instance", "remove", "web"]);
    env.fails(&["instance", "show", "web"], "no instance");
    env.fails(&["create", "web", "s2"], "stasis instance add");
    assert_eq!(env.json(&["show", "web/s1"])["name"], "s1");
}

/// Without `--hypervisor`, the files tell: QEMU's migration stream, Firecracker's
/// vmstate, Cloud Hypervisor's snapshot directory; files that tell nothing leave it
/// unknown.
#[test]
fn the_hypervisor_is_told_by_the_files() {
    let env = Env::new();
    env.ok(&["init"]);
    let mem = env.path("mem");
    fs::write(&mem, noise(8192, 1)).expect("mem");
    let cases: [(&str, &str, Vec<u8>, Option<&str>); 4] = [
        (
            "q",
            "vmstate",
            b"QEVM\0\0\0\x03\x01\0\0\0".to_vec(),
            Some("qemu"),
        ),
        (
            "f",
            "vmstate",
            0x0710_1984_8664_0000u64.to_le_bytes().to_vec(),
            Some("firecracker"),
        ),
        (
            "c",
            "state.json",
            b"{\"snapshots\": {}}".to_vec(),
            Some("cloud-hypervisor"),
        ),
        ("n", "vmstate", b"nothing known".to_vec(), None),
    ];
    for (vm, name, head, want) in cases {
        let state = env.path(&format!("{vm}-{name}"));
        fs::write(&state, &head).expect("state");
        let snap = env.json(&[
            "create",
            vm,
            "s",
            "--memory",
            mem.to_str().expect("utf8"),
            "--state",
            &format!("{name}={}", state.display()),
        ]);
        assert_eq!(snap["source_hypervisor"].as_str(), want, "{vm}: {snap}");
    }
    // The flag wins over the files.
    let state = env.path("q-vmstate");
    let snap = env.json(&[
        "create",
        "q",
        "t",
        "--hypervisor",
        "qemu-microvm",
        "--state",
        &format!("vmstate={}", state.display()),
    ]);
    assert_eq!(snap["source_hypervisor"], "qemu-microvm");
}

/// `stasis instance restore`: the snapshot's files back at the instance's paths (its
/// owner and mode kept), between the restore hooks, refused with nothing changed when
/// the pre-restore hook fails or the target state cannot be had.
#[test]
fn an_instance_is_restored_to_its_snapshot_on_the_cli() {
    let env = Env::new();
    env.ok(&["init"]);
    let (disk, mem) = (env.path("vm.img"), env.path("vm.mem"));
    fs::write(&disk, noise(300_000, 1)).expect("disk");
    fs::write(&mem, noise(100_000, 2)).expect("mem");
    let want_disk = fs::read(&disk).expect("disk");
    let want_mem = fs::read(&mem).expect("mem");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o640)).expect("chmod");
    let log = env.path("restore.log");
    let gate = env.path("gate");
    let pre = format!(
        "test -e {} || exit 3; echo \"pre $STASIS_TARGET_STATE\" >> {}",
        gate.display(),
        log.display()
    );
    env.ok(&[
        "instance",
        "add",
        "vm",
        "--hypervisor",
        "firecracker",
        "--disk",
        &format!("root={}", disk.display()),
        "--memory",
        &format!("mem={}", mem.display()),
        "--pre-restore",
        &pre,
    ]);
    env.ok(&["create", "vm", "s1"]);
    fs::write(&disk, b"changed").expect("disk");
    fs::write(&mem, b"changed").expect("mem");
    // The pre-restore hook refuses: nothing changed, no temporary file left.
    env.fails(
        &["instance", "restore", "vm", "s1"],
        "pre-restore hook failed",
    );
    assert_eq!(fs::read(&disk).expect("disk"), b"changed");
    let stray = fs::read_dir(env.path("."))
        .expect("dir")
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("stasis-restore"));
    assert!(!stray, "a temporary file was left");
    // Running needs a post-restore hook to start the VM.
    env.fails(
        &[
            "instance",
            "restore",
            "vm",
            "s1",
            "--target-state",
            "Running",
        ],
        "no post-restore hook",
    );
    fs::write(&gate, b"").expect("gate");
    // While another holds the instance's directory lock, a restore is refused.
    let held = Command::new("flock")
        .arg(env.dir.path())
        .arg(BIN)
        .arg("--repo")
        .arg(env.path("repo"))
        .args(["instance", "restore", "vm", "s1"])
        .env_remove("STASIS_REPO")
        .output()
        .expect("run flock");
    assert!(!held.status.success());
    let text = String::from_utf8_lossy(&held.stderr);
    assert!(text.contains("another restore of instance vm"), "{text}");
    assert_eq!(fs::read(&disk).expect("disk"), b"changed");
    let done = env.json(&["instance", "restore", "vm", "s1"]);
    assert_eq!(done["state"], "Standby", "{done}");
    assert!(fs::read(&disk).expect("disk") == want_disk);
    assert!(fs::read(&mem).expect("mem") == want_mem);
    assert_eq!(
        fs::metadata(&disk).expect("meta").permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(fs::read_to_string(&log).expect("log"), "pre Standby\n");
    let timeline = env.ok(&["log", "vm/s1"]);
    assert!(timeline.contains("restored"), "{timeline}");
}

/// `stasis forget` keeps what restic's policy keeps (a dry run removes nothing), and a
/// snapshot with children is consolidated into them, so no data is lost; `stasis
/// schedule` sets, shows, lists and removes an instance's schedule.
#[test]
fn forget_keeps_the_policy_and_schedules_are_managed() {
    let env = Env::new();
    env.ok(&["init"]);
    let img = env.path("d.img");
    let mut ids = Vec::new();
    for n in 0..5u64 {
        fs::write(&img, noise(100_000, n)).expect("img");
        let s = env.json(&[
            "create",
            "vm",
            &format!("s{n}"),
            "--disk",
            &format!("root={}", img.display()),
        ]);
        ids.push(s["id"].as_str().expect("id").to_string());
    }
    env.fails(&["forget", "vm"], "keep");
    let dry = env.json(&["forget", "vm", "--keep-last", "2", "--dry-run"]);
    let kept: Vec<&str> = dry["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter(|d| d["kept_by"].as_array().is_some_and(|k| !k.is_empty()))
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(kept.len(), 2, "{dry}");
    assert!(
        kept.contains(&ids[4].as_str()) && kept.contains(&ids[3].as_str()),
        "{dry}"
    );
    assert_eq!(
        env.json(&["list", "--vm", "vm"]).as_array().map(Vec::len),
        Some(5)
    );
    env.json(&["forget", "vm", "--keep-last", "2"]);
    let left: Vec<String> = env
        .json(&["list", "--vm", "vm"])
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect();
    assert_eq!(left, ids[3..].to_vec());
    // The newest still restores byte-identical: its ancestors' blocks were kept for it.
    let out = env.path("out");
    env.ok(&["restore", &ids[4], out.to_str().expect("utf8")]);
    assert!(fs::read(out.join("root")).expect("root") == fs::read(&img).expect("img"));
    env.ok(&["verify"]);

    env.ok(&[
        "instance",
        "add",
        "vm",
        "--hypervisor",
        "qemu",
        "--disk",
        &format!("root={}", img.display()),
    ]);
    env.fails(
        &[
            "schedule",
            "set",
            "vm",
            "--interval",
            "30s",
            "--max-count",
            "2",
        ],
        "1m",
    );
    env.fails(
        &[
            "schedule",
            "set",
            "nope",
            "--interval",
            "1h",
            "--max-count",
            "2",
        ],
        "nope",
    );
    let s = env.json(&[
        "schedule",
        "set",
        "vm",
        "--interval",
        "1h",
        "--max-count",
        "2",
        "--name-prefix",
        "hourly",
        "--tag",
        "team=infra",
    ]);
    assert_eq!(s["interval"], "1h", "{s}");
    let shown = env.ok(&["schedule", "show", "vm"]);
    assert!(
        shown.contains("keeps       the newest 2") && shown.contains("hourly-"),
        "{shown}"
    );
    assert!(env.ok(&["schedule", "list"]).contains("vm"));
    // Not due for an hour: a run now makes nothing.
    assert!(env.ok(&["schedule", "run"]).contains("no schedule is due"));
    env.ok(&["schedule", "remove", "vm"]);
    env.fails(&["schedule", "show", "vm"], "no schedule");
}
