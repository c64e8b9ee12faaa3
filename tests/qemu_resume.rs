//! A real QEMU guest resumes with its memory file and device state read from the mount.
//!
//! The guest (`tools/qemu-guest.sh`: Debian cloud kernel, busybox initramfs, cached under
//! `target/tmp`) boots under TCG with its 128 MiB of RAM in a file (memory-backend-file,
//! share=on). It draws a random token, writes 32 MiB of random bytes into a tmpfs and
//! prints `GUEST-TICK <token> <n> <md5 of the 32 MiB>` once a second. The test stops it,
//! saves its device state with `migrate` + x-ignore-shared, stores RAM file and state with
//! `stasis create --memory --state`, deletes both originals, mounts the repository and
//! starts a new QEMU whose RAM is the `mem` file in the mount (share=off, i.e.
//! MAP_PRIVATE) and whose state comes from `migrate-incoming exec:cat <mount>/.../vmstate`.
//! After `cont` the guest must go on counting where it stopped, with the same token and
//! the same md5 (it re-reads all 32 MiB from RAM served by the mount on every tick).
//!
//! Needs qemu-system-x86_64 and /dev/fuse, run as root (as `.ci/run` does, which installs
//! qemu-system-x86). Without qemu the test fails and says so, unless `STASIS_SKIP_QEMU=1`
//! is set, in which case it passes without running (and prints that it skipped).
//! Correctness never depends on timing: every wait polls for a condition with a generous
//! bound, and a bound that runs out is a failure showing the guest's console.

#[path = "common/mount.rs"]
mod mount;
#[path = "common/serve.rs"]
mod serve;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mount::{Mount, stasis};
use serde_json::{Value, json};

const MEM_MIB: u32 = 128;
/// Bounds for things that normally take seconds: a slow shared CI machine gets minutes.
const BOOT_BOUND: Duration = Duration::from_secs(600);
const STEP_BOUND: Duration = Duration::from_secs(180);

/// A QMP connection (one command at a time; events are skipped).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(sock: &Path, qemu: &mut Child) -> Qmp {
        let deadline = Instant::now() + STEP_BOUND;
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(st)) = qemu.try_wait() {
                        panic!("qemu exited before its QMP socket opened: {st}");
                    }
                    assert!(Instant::now() < deadline, "QMP socket {sock:?}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        // A read that never returns would hang the test: bound every wait for a reply.
        stream
            .set_read_timeout(Some(STEP_BOUND))
            .expect("socket timeout");
        let writer = stream.try_clone().expect("clone socket");
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.line().unwrap_or_else(|e| panic!("QMP greeting: {e}"));
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        q.call("qmp_capabilities", None);
        q
    }

    /// The next message; an error once the connection is closed or broken (QEMU may
    /// have exited, as it does after `quit`).
    fn line(&mut self) -> Result<Value, String> {
        let mut s = String::new();
        let n = self
            .reader
            .read_line(&mut s)
            .map_err(|e| format!("read from QMP: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&s).map_err(|e| format!("QMP sent no JSON ({e}): {s}"))
    }

    fn try_call(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").map_err(|e| format!("{cmd}: write to QMP: {e}"))?;
        loop {
            let r = self.line().map_err(|e| format!("{cmd}: {e}"))?;
            if r.get("event").is_some() {
                continue;
            }
            if let Some(e) = r.get("error") {
                return Err(format!("{cmd}: {e}"));
            }
            return Ok(r.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    fn call(&mut self, cmd: &str, args: Option<Value>) -> Value {
        self.try_call(cmd, args)
            .unwrap_or_else(|e| panic!("QMP {e}"))
    }

    /// Poll `query-migrate` until the migration completed (bounded).
    fn wait_migration(&mut self, qemu: &mut Guest) {
        let deadline = Instant::now() + STEP_BOUND;
        loop {
            let r = self.call("query-migrate", None);
            match r["status"].as_str() {
                Some("completed") => return,
                Some("failed" | "cancelled") => panic!("migration failed: {r}"),
                _ => {}
            }
            qemu.check_alive();
            assert!(
                Instant::now() < deadline,
                "migration did not complete: {r}\n{}",
                qemu.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A running QEMU; killed and reaped on drop.
struct Guest {
    child: Child,
    console: PathBuf,
}

impl Guest {
    fn start(
        dir: &Path,
        name: &str,
        guest: &Path,
        ram: &Path,
        share: bool,
        extra: &[&str],
    ) -> Guest {
        let console = dir.join(format!("{name}.console"));
        let sock = dir.join(format!("{name}.qmp"));
        let _ = fs::remove_file(&sock);
        let child = Command::new("qemu-system-x86_64")
            .args(["-name", name, "-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &format!("{MEM_MIB}M")])
            .args(["-machine", "q35,memory-backend=mem"])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=mem,size={MEM_MIB}M,mem-path={},share={}",
                ram.display(),
                if share { "on" } else { "off" }
            ))
            .args([
                "-nodefaults",
                "-no-user-config",
                "-vga",
                "none",
                "-display",
                "none",
            ])
            .args(["-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd.cpio.gz"))
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(dir.join(format!("{name}.stderr"))).expect("stderr file"),
            ))
            .spawn()
            .expect("start qemu-system-x86_64");
        Guest { child, console }
    }

    fn qmp(&mut self) -> Qmp {
        let sock = self.console.with_extension("qmp");
        Qmp::connect(&sock, &mut self.child)
    }

    fn console(&self) -> String {
        let text = fs::read(&self.console).unwrap_or_default();
        let stderr = fs::read(self.console.with_extension("stderr")).unwrap_or_default();
        format!(
            "--- guest console ---\n{}\n--- qemu stderr ---\n{}",
            String::from_utf8_lossy(&text),
            String::from_utf8_lossy(&stderr)
        )
    }

    fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("qemu exited: {st}\n{}", self.console());
        }
    }

    /// Complete `GUEST-TICK` lines: (token, n, md5).
    fn ticks(&self) -> Vec<(String, u64, String)> {
        let text = fs::read(&self.console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        // Only lines that ended: the last one may still be arriving.
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        complete
            .lines()
            .filter_map(|l| {
                let mut w = l[l.find("GUEST-TICK ")?..].split_whitespace().skip(1);
                let (tok, n, sum) = (w.next()?, w.next()?, w.next()?);
                Some((tok.to_string(), n.parse().ok()?, sum.to_string()))
            })
            .collect()
    }

    /// Wait until `f` holds for the console's complete ticks (bounded).
    fn wait_ticks(
        &mut self,
        bound: Duration,
        what: &str,
        f: impl Fn(&[(String, u64, String)]) -> bool,
    ) {
        let deadline = Instant::now() + bound;
        while !f(&self.ticks()) {
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {bound:?}\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn quit(mut self, qmp: &mut Qmp) {
        let _ = qmp.try_call("quit", None);
        let deadline = Instant::now() + STEP_BOUND;
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "qemu did not quit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The guest's kernel and initramfs (built once, cached next to the build); `None`
/// when qemu is missing and `STASIS_SKIP_QEMU=1` says to skip.
fn guest_files() -> Option<PathBuf> {
    if !have_qemu() {
        if std::env::var("STASIS_SKIP_QEMU").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED: qemu-system-x86_64 is not installed and STASIS_SKIP_QEMU=1");
            return None;
        }
        panic!(
            "this test boots a real guest and needs qemu-system-x86_64: install \
             qemu-system-x86 (.ci/run does), or set STASIS_SKIP_QEMU=1 to skip it"
        );
    }
    let guest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-guest");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/qemu-guest.sh");
    let out = Command::new(&script)
        .arg(&guest)
        .output()
        .expect("run tools/qemu-guest.sh");
    assert!(
        out.status.success(),
        "tools/qemu-guest.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(guest)
}

#[test]
fn a_qemu_guest_resumes_from_memory_and_state_in_the_mount() {
    let Some(guest) = guest_files() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let ram = dir.path().join("guest.ram");
    let vmstate = dir.path().join("guest.vmstate");

    // 1. Boot, let it tick, stop it and save its device state (RAM stays in the file).
    let mut a = Guest::start(dir.path(), "boot", &guest, &ram, true, &[]);
    let mut qa = a.qmp();
    a.wait_ticks(BOOT_BOUND, "the booted guest's first ticks", |t| {
        t.len() >= 2
    });
    qa.call("stop", None);
    let ticks = a.ticks();
    let (token, last, sum) = ticks.last().cloned().expect("ticks before the stop");
    assert!(
        ticks.iter().all(|t| t.0 == token && t.2 == sum),
        "one boot, stable memory: {ticks:?}"
    );
    qa.call(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    );
    qa.call(
        "migrate",
        Some(json!({"uri": format!("exec:cat > {}", vmstate.display())})),
    );
    qa.wait_migration(&mut a);
    a.quit(&mut qa);
    let state_len = fs::metadata(&vmstate).expect("vmstate").len();
    assert!(
        state_len > 0 && state_len < u64::from(MEM_MIB) << 20 >> 2,
        "x-ignore-shared leaves RAM out of the state ({state_len} bytes)"
    );

    // 2. Store RAM and state; the originals go away, so only the mount can serve them.
    let repo = dir.path().join("repo");
    stasis(&repo, &["init"]);
    stasis(
        &repo,
        &[
            "create",
            "guest",
            "saved",
            "--hypervisor",
            "qemu",
            "--memory",
            &format!("mem={}", ram.display()),
            "--state",
            &format!("vmstate={}", vmstate.display()),
        ],
    );
    fs::remove_file(&ram).expect("rm ram");
    fs::remove_file(&vmstate).expect("rm vmstate");
    let point = dir.path().join("mnt");
    let m = Mount::start(&repo, &point);
    let snap = point.join("vms/guest/saved");
    assert_eq!(
        fs::metadata(snap.join("mem"))
            .expect("mem in the mount")
            .len(),
        u64::from(MEM_MIB) << 20
    );

    // 3. Resume: RAM mapped privately from the mount, state streamed from it.
    let mem = snap.join("mem");
    let mut b = Guest::start(
        dir.path(),
        "resume",
        &guest,
        &mem,
        false,
        &["-incoming", "defer"],
    );
    let mut qb = b.qmp();
    qb.call(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    );
    qb.call(
        "migrate-incoming",
        Some(json!({"uri": format!("exec:cat {}", snap.join("vmstate").display())})),
    );
    qb.wait_migration(&mut b);
    let maps = fs::read_to_string(format!("/proc/{}/maps", b.child.id())).expect("maps");
    // The kernel names mappings by their resolved path.
    let real = fs::canonicalize(&mem).expect("canonical mem path");
    assert!(
        maps.contains(&real.display().to_string()),
        "QEMU maps guest RAM from the mount"
    );
    qb.call("cont", None);
    let status = qb.call("query-status", None);
    assert_eq!(status["status"], "running", "{status}");

    // 4. The same guest goes on: same token, the count continues, memory intact. The
    //    tick cut off by the stop may finish on the new console, so the first complete
    //    one is last+1 or last+2; two consecutive ticks show it keeps running.
    let want = |t: &[(String, u64, String)]| t.len() >= 2;
    b.wait_ticks(STEP_BOUND, "two ticks after resuming", want);
    let after = b.ticks();
    let first = after[0].1;
    assert!(
        first == last + 1 || first == last + 2,
        "the count continues from {last}: {after:?}"
    );
    for (k, (tok, n, s)) in after.iter().enumerate() {
        assert_eq!(tok, &token, "same boot (a reboot draws a new token)");
        assert_eq!(*n, first + k as u64, "consecutive ticks: {after:?}");
        assert_eq!(s, &sum, "the guest's 32 MiB read back intact from RAM");
    }
    eprintln!(
        "guest {token}: stopped after tick {last}, resumed from the mount: ticks {:?}",
        after.iter().map(|t| t.1).collect::<Vec<_>>()
    );
    b.quit(&mut qb);
    m.stop();
}

/// POST a JSON body; the status and the JSON answer.
fn post(base: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = ureq::post(&format!("{base}{path}"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

/// hypeman's flow on a real guest: the guest is a registered instance whose hooks talk
/// QMP (`tools/qmp.py`): the pre-snapshot hook stops it and saves its device state,
/// the post-snapshot hook lets it run on. A Standby snapshot through the API, the guest
/// runs on (its RAM file changes), then a restore through the API: the pre-restore hook
/// quits it, the snapshot's RAM and state are put back at the instance's paths, and a
/// QEMU started from those files resumes the guest where the snapshot stopped it.
#[test]
fn a_qemu_instance_is_snapshotted_and_restored_through_the_api() {
    let Some(guest) = guest_files() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let files = dir.path().join("files");
    fs::create_dir_all(&files).expect("files");
    let (ram, vmstate) = (files.join("guest.ram"), files.join("guest.vmstate"));
    let qmp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/qmp.py");
    let sock = dir.path().join("live.qmp");
    let at_snapshot = dir.path().join("console.at-snapshot");

    // QMP serves one client at a time: only the hooks talk to this guest.
    let mut a = Guest::start(dir.path(), "live", &guest, &ram, true, &[]);
    a.wait_ticks(BOOT_BOUND, "the booted guest's first ticks", |t| {
        t.len() >= 2
    });
    let q = |cmd: &str| format!("{} {} {cmd}", qmp.display(), sock.display());
    let pre_snapshot = format!(
        "{} && cp {} {} && {} && {} --wait-migration",
        q("stop"),
        a.console.display(),
        at_snapshot.display(),
        q(
            r#"migrate-set-capabilities '{"capabilities": [{"capability": "x-ignore-shared", "state": true}]}'"#
        ),
        q(&format!(
            r#"migrate '{{"uri": "exec:cat > {}"}}'"#,
            vmstate.display()
        )),
    );
    let repo = dir.path().join("repo");
    stasis(&repo, &["init"]);
    stasis(
        &repo,
        &[
            "instance",
            "add",
            "guest",
            "--hypervisor",
            "qemu",
            "--memory",
            &format!("mem={}", ram.display()),
            "--state",
            &format!("vmstate={}", vmstate.display()),
            "--pre-snapshot",
            &pre_snapshot,
            "--post-snapshot",
            &q("cont"),
            "--pre-restore",
            &q("quit"),
        ],
    );
    let token = stasis(&repo, &["token", "create", "--tenant", "default"])
        .trim()
        .to_string();
    let root = format!("default={}", files.display());
    let server = serve::Serve::start(&repo, &["--payload-root", &root]);

    // 1. A Standby snapshot by name: the hooks stop and save the guest, then resume it.
    let (status, snap) = post(
        &server.base,
        "/instances/guest/snapshots",
        &token,
        &json!({"kind": "Standby", "name": "saved"}),
    );
    assert_eq!(status, 201, "{snap}\n{}", a.console());
    assert_eq!(snap["source_hypervisor"], "qemu");
    let id = snap["id"].as_str().expect("id").to_string();
    let before: Vec<(String, u64, String)> = {
        let text = fs::read_to_string(&at_snapshot).expect("console at the snapshot");
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        complete
            .lines()
            .filter_map(|l| {
                let mut w = l[l.find("GUEST-TICK ")?..].split_whitespace().skip(1);
                let (tok, n, sum) = (w.next()?, w.next()?, w.next()?);
                Some((tok.to_string(), n.parse().ok()?, sum.to_string()))
            })
            .collect()
    };
    let (token_at, last, sum) = before.last().cloned().expect("ticks before the snapshot");
    // The post-snapshot hook let it run on: it ticks past the snapshot.
    a.wait_ticks(STEP_BOUND, "ticks after the snapshot", |t| {
        t.last().is_some_and(|l| l.1 >= last + 2)
    });

    // 2. Restore through the API: the pre-restore hook quits the guest, its files go
    //    back to what the snapshot holds.
    let (status, inst) = post(
        &server.base,
        &format!("/instances/guest/snapshots/{id}/restore"),
        &token,
        &json!({"target_state": "Standby"}),
    );
    assert_eq!(status, 200, "{inst}");
    assert_eq!(inst["state"], "Standby", "{inst}");
    assert_eq!(inst["hypervisor"], "qemu", "{inst}");
    let deadline = Instant::now() + STEP_BOUND;
    while !matches!(a.child.try_wait(), Ok(Some(_))) {
        assert!(
            Instant::now() < deadline,
            "the pre-restore hook did not quit qemu"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();

    // 3. A new QEMU from the restored files at the instance's paths resumes the guest
    //    where the snapshot stopped it.
    let mut b = Guest::start(
        dir.path(),
        "restored",
        &guest,
        &ram,
        true,
        &["-incoming", "defer"],
    );
    let mut qb = b.qmp();
    qb.call(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    );
    qb.call(
        "migrate-incoming",
        Some(json!({"uri": format!("exec:cat {}", vmstate.display())})),
    );
    qb.wait_migration(&mut b);
    qb.call("cont", None);
    b.wait_ticks(STEP_BOUND, "two ticks after the restore", |t| t.len() >= 2);
    let after = b.ticks();
    let first = after[0].1;
    assert!(
        first == last + 1 || first == last + 2,
        "the count continues from the snapshot's {last}, not from where it ran on: {after:?}"
    );
    for (k, (tok, n, s)) in after.iter().enumerate() {
        assert_eq!(tok, &token_at, "same boot (a reboot draws a new token)");
        assert_eq!(*n, first + k as u64, "consecutive ticks: {after:?}");
        assert_eq!(s, &sum, "the guest's 32 MiB intact in the restored RAM");
    }
    eprintln!(
        "guest {token_at}: snapshot at tick {last}, ran on, restored: ticks {:?}",
        after.iter().map(|t| t.1).collect::<Vec<_>>()
    );
    b.quit(&mut qb);
}
