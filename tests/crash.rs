//! Crash safety of the real binary: `create`, `delete` and `gc` on ext4 images, killed
//! with SIGKILL between every two steps of their write/fsync order and inside every
//! catalog write (`STASIS_KILL_AT`, see `src/faults.rs`), then at random moments. The
//! steps are counted and asserted; the random moments add coverage (about 165 kills
//! over the four tests, on top of about 49 steps), but whether a moment lands before
//! the command ends depends on timing, so nothing asserts their number. After every
//! kill:
//! - `verify --read-data` finds no problem (packs no index names are allowed: garbage);
//! - every snapshot committed before restores byte-identical;
//! - the interrupted snapshot is absent or complete;
//! - running the same command again succeeds, and leaves the repository clean.
//!
//! Power loss (unsynced writes dropped) is covered below the binary, where a backend
//! can drop them: `crates/stasis-store/tests/roundtrip.rs` (create and gc at every step).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stasis");

fn stasis(repo: &Path, args: &[&str], kill_at: Option<u64>) -> Output {
    let mut c = Command::new(BIN);
    c.arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("STASIS_KILL_AT");
    if let Some(n) = kill_at {
        c.env("STASIS_KILL_AT", n.to_string());
    }
    c.output().expect("run stasis")
}

fn ok(repo: &Path, args: &[&str]) -> String {
    let out = stasis(repo, args, None);
    assert!(
        out.status.success(),
        "stasis {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(libc::SIGKILL)
}

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

/// One kill scenario: a repository prepared once, a command, what must survive.
struct Scenario {
    dir: tempfile::TempDir,
    template: PathBuf,
    command: Vec<String>,
    /// Snapshots committed before the command, with their source image.
    committed: Vec<(String, PathBuf)>,
    /// The snapshot the command creates (if it is a create), and its source.
    creates: Option<(String, PathBuf)>,
    /// The command removes garbage: after the rerun no unindexed pack may remain.
    cleans: bool,
    /// The command deletes this snapshot.
    deletes: Option<String>,
}

impl Scenario {
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn args(&self) -> Vec<&str> {
        self.command.iter().map(String::as_str).collect()
    }

    fn verify_clean(&self, repo: &Path, what: &str, no_garbage: bool) {
        let out = stasis(repo, &["--json", "verify", "--read-data"], None);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success() && v["problems"].as_array().is_some_and(Vec::is_empty),
            "{what}: verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if no_garbage {
            assert!(
                v["unindexed_packs"].as_array().is_some_and(Vec::is_empty),
                "{what}: garbage left after the rerun: {v}"
            );
        }
    }

    fn restores(&self, repo: &Path, spec: &str, img: &Path, what: &str) {
        let out = self.dir.path().join("out");
        let _ = fs::remove_dir_all(&out);
        ok(repo, &["restore", spec, out.to_str().expect("utf8")]);
        let got = fs::read(out.join("root")).expect("restored file");
        let want = fs::read(img).expect("source");
        assert!(
            got == want,
            "{what}: {spec} does not restore byte-identical"
        );
    }

    fn exists(&self, repo: &Path, spec: &str) -> bool {
        let out = stasis(repo, &["--json", "show", spec], None);
        if !out.status.success() {
            return false;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["status"] != "deleted"
    }

    /// Run the command killed as `kill` says; check everything. Returns whether the
    /// command was killed (false: it finished first).
    fn round(&self, kill: Kill, what: &str) -> bool {
        let repo = self.work();
        copy_dir(&self.template, &repo);
        let was_killed = match kill {
            Kill::AtStep(n) => {
                let out = stasis(&repo, &self.args(), Some(n));
                if !killed(&out) {
                    assert!(
                        out.status.success(),
                        "{what}: unkilled run failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                killed(&out)
            }
            Kill::After(d) => {
                let mut child = Command::new(BIN)
                    .arg("--repo")
                    .arg(&repo)
                    .args(self.args())
                    .env_remove("STASIS_KILL_AT")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn");
                std::thread::sleep(d);
                let _ = child.kill();
                let st = child.wait().expect("wait");
                use std::os::unix::process::ExitStatusExt;
                st.signal() == Some(libc::SIGKILL)
            }
        };
        self.verify_clean(&repo, what, false);
        for (spec, img) in &self.committed {
            if self.deletes.as_deref() == Some(spec.as_str()) && !self.exists(&repo, spec) {
                continue; // the delete committed before the kill
            }
            self.restores(&repo, spec, img, what);
        }
        let mut rerun = true;
        if let Some((spec, img)) = &self.creates
            && self.exists(&repo, spec)
        {
            // Complete, or it would not be there.
            self.restores(&repo, spec, img, what);
            rerun = false;
        }
        if let Some(spec) = &self.deletes
            && !self.exists(&repo, spec)
        {
            rerun = false;
        }
        if rerun {
            ok(&repo, &self.args());
        }
        if let Some((spec, img)) = &self.creates {
            self.restores(&repo, spec, img, what);
        }
        if self.cleans {
            // A second gc after the rerun has nothing left to remove.
            ok(&repo, &["gc"]);
        }
        self.verify_clean(&repo, &format!("{what}, after the rerun"), self.cleans);
        was_killed
    }

    /// Every step, then random moments within an unkilled run's duration until
    /// `timed` of them have killed the command (at most `8 * timed` tries: a moment
    /// after the command ended kills nothing). Returns the number of steps (each one
    /// killed once).
    fn run(&self, timed: u32, seed: u64) -> u64 {
        let mut step = 0;
        assert!(
            self.round(
                Kill::AtStep(0),
                &format!("{:?} killed at step 0", self.command)
            ),
            "{:?} was not killed at its first step: is the binary built with the `faults` \
             feature (cargo test --features stasis/faults, as .ci/run does)?",
            self.command
        );
        step += 1;
        while self.round(
            Kill::AtStep(step),
            &format!("{:?} killed at step {step}", self.command),
        ) {
            step += 1;
            assert!(step < 500, "the command never finished");
        }
        eprintln!("{:?}: killed at each of its {step} steps", self.command);
        assert!(step >= 3, "{:?}: only {step} steps", self.command);
        let repo = self.work();
        copy_dir(&self.template, &repo);
        let t = Instant::now();
        ok(&repo, &self.args());
        let span = t.elapsed().as_micros().max(1000) as u64;
        let mut x = seed | 1;
        let mut kills = 0;
        let mut tries = 0;
        while kills < timed && tries < 8 * timed {
            let i = tries;
            tries += 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = Duration::from_micros(x % span);
            if self.round(
                Kill::After(d),
                &format!("{:?} killed after {d:?} (#{i})", self.command),
            ) {
                kills += 1;
            }
        }
        eprintln!(
            "{:?}: killed at {kills} of {tries} random moments",
            self.command
        );
        step
    }
}

#[derive(Clone, Copy)]
enum Kill {
    AtStep(u64),
    After(Duration),
}

/// A repository with `base` (and `child` when asked) committed, small packs so that
/// one create spans many steps.
fn prepare(with_child: bool) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let base = common::make_ext4(dir.path(), "base.img", "32M");
    let child = dir.path().join("child.img");
    fs::copy(&base, &child).expect("copy");
    common::modify_ext4(dir.path(), &child, 3);
    let template = dir.path().join("template");
    fs::create_dir(&template).expect("mkdir");
    let t = template.as_path();
    ok(t, &["init", "--pack-size", "1MiB", "--block-size", "16KiB"]);
    ok(
        t,
        &[
            "create",
            "vm",
            "base",
            "--disk",
            &format!("root={}", base.display()),
        ],
    );
    if with_child {
        ok(
            t,
            &[
                "create",
                "vm",
                "child",
                "--disk",
                &format!("root={}", child.display()),
            ],
        );
    }
    (dir, template, base, child)
}

#[test]
fn create_survives_sigkill_anywhere() {
    let (dir, template, base, child) = prepare(false);
    let s = Scenario {
        command: vec![
            "create".into(),
            "vm".into(),
            "child".into(),
            "--disk".into(),
            format!("root={}", child.display()),
        ],
        committed: vec![("vm/base".into(), base)],
        creates: Some(("vm/child".into(), child)),
        cleans: false,
        deletes: None,
        template,
        dir,
    };
    let steps = s.run(40, 11);
    assert!(steps >= 10, "create: {steps} steps");
}

#[test]
fn gc_survives_sigkill_anywhere() {
    let (dir, template, _base, child) = prepare(true);
    // base goes: its own blocks are garbage and the packs it shares get repacked.
    ok(&template, &["delete", "vm/base"]);
    let s = Scenario {
        command: vec!["gc".into()],
        committed: vec![("vm/child".into(), child)],
        creates: None,
        cleans: true,
        deletes: None,
        template,
        dir,
    };
    let steps = s.run(45, 23);
    assert!(steps >= 12, "gc: {steps} steps");
}

#[test]
fn delete_survives_sigkill_anywhere() {
    let (dir, template, base, child) = prepare(true);
    let s = Scenario {
        command: vec!["delete".into(), "vm/base".into()],
        committed: vec![("vm/base".into(), base), ("vm/child".into(), child)],
        creates: None,
        cleans: false,
        deletes: Some("vm/base".into()),
        template,
        dir,
    };
    let steps = s.run(40, 37);
    assert!(steps >= 6, "delete: {steps} steps");
}

/// A create of a memory payload (4 KiB blocks: many more tree nodes per pack), killed
/// at every step.
#[test]
fn memory_create_survives_sigkill_anywhere() {
    let (dir, template, base, child) = prepare(false);
    let s = Scenario {
        command: vec![
            "create".into(),
            "vm".into(),
            "mem".into(),
            "--memory".into(),
            format!("root={}", child.display()),
        ],
        committed: vec![("vm/base".into(), base)],
        creates: Some(("vm/mem".into(), child)),
        cleans: false,
        deletes: None,
        template,
        dir,
    };
    let steps = s.run(40, 51);
    assert!(steps >= 10, "memory create: {steps} steps");
}

/// The `.tmp-` files under `dir`, at any depth.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("ls").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temporaries(&p));
        } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A create killed while it writes a pack leaves that pack's temporary file. gc
/// leaves it while it is recent (a running writer's looks the same), and removes it
/// once old; the repository stays whole.
#[test]
fn gc_removes_the_temporaries_of_killed_creates() {
    let (_dir, repo, _base, child) = prepare(false);
    let disk = format!("root={}", child.display());
    let left = (0..40)
        .find_map(|n| {
            let out = stasis(&repo, &["create", "vm", "child", "--disk", &disk], Some(n));
            assert!(killed(&out), "create finished before leaving a temporary");
            let t = temporaries(&repo);
            (!t.is_empty()).then_some(t)
        })
        .expect("a killed create left a temporary file");
    ok(&repo, &["gc"]);
    assert_eq!(temporaries(&repo), left, "a recent temporary was removed");
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for t in &left {
        let f = fs::File::options().write(true).open(t).expect("open");
        f.set_modified(long_ago).expect("set mtime");
    }
    let said = ok(&repo, &["gc"]);
    assert!(
        said.contains(&format!("removed {} temporary files", left.len())),
        "{said}"
    );
    assert!(temporaries(&repo).is_empty());
    let v: Value =
        serde_json::from_str(&ok(&repo, &["--json", "verify", "--read-data"])).expect("json");
    assert!(v["problems"].as_array().is_some_and(Vec::is_empty), "{v}");
}
