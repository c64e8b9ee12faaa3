//! `stasis` run as a child process, and a running `stasis mount` (as root with
//! /dev/fuse, as in CI). Included by the tests that mount, with `#[path]`.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stasis");

pub fn stasis(repo: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("run stasis");
    assert!(
        out.status.success(),
        "stasis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// A running `stasis mount`; unmounted (and reaped) on drop, also when a test fails.
pub struct Mount {
    child: Option<Child>,
    point: PathBuf,
}

impl Mount {
    pub fn start(repo: &Path, point: &Path) -> Mount {
        Mount::start_with_env(repo, point, &[])
    }

    /// [`Mount::start`] with more environment variables (an object store's `AWS_*`).
    pub fn start_with_env(repo: &Path, point: &Path, env: &[(String, String)]) -> Mount {
        assert!(
            Path::new("/dev/fuse").exists(),
            "FUSE tests need /dev/fuse (CI runs them as root)"
        );
        fs::create_dir_all(point).expect("mountpoint");
        let child = Command::new(BIN)
            .arg("--repo")
            .arg(repo)
            .arg("mount")
            .arg(point)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mount");
        let mut m = Mount {
            child: Some(child),
            point: point.to_path_buf(),
        };
        // Wait until the kernel shows our root (bounded; failure is an error, not a skip).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !point.join("vms").exists() {
            if let Some(c) = m.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("stasis mount exited early: {st}");
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn stop(mut self) {
        let out = Command::new(BIN)
            .arg("umount")
            .arg(&self.point)
            .output()
            .expect("umount");
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st = self.child.take().map(|mut c| c.wait().expect("wait"));
        assert!(
            st.is_some_and(|s| s.success()),
            "stasis mount exits cleanly after umount"
        );
    }
}

impl Mount {
    /// Send `sig` to the mount process and wait for it; its exit status.
    pub fn signal(mut self, sig: i32) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
        c.wait().expect("wait")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new(BIN).arg("umount").arg(&self.point).output();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
