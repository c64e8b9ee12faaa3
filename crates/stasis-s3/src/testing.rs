//! A real Garage cluster for tests (`tools/garage.sh`), stopped when dropped: for this
//! crate's tests and the end-to-end tests of the binary (the `testing` feature).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use object_store::ObjectStore;
use stasis_store::MemoryLocks;

use crate::{PIECE_SIZE, PieceCache, RemoteBackend, S3Location};

/// A running cluster: its directory and the variables a client needs.
#[derive(Debug)]
pub struct Garage {
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
    pub bucket: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/garage.sh")
}

impl Garage {
    /// Start `nodes` nodes with replication factor `nodes`, or `None` when the test is
    /// skipped on purpose (`STASIS_SKIP_GARAGE=1`). Without a garage binary and without
    /// that variable, the test fails: `.ci/run` installs it.
    pub fn start(nodes: u32) -> Option<Garage> {
        if std::env::var_os("STASIS_SKIP_GARAGE").is_some() {
            eprintln!("skipped: STASIS_SKIP_GARAGE is set");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .arg(nodes.to_string())
            .output()
            .expect("running tools/garage.sh");
        assert!(
            out.status.success(),
            "tools/garage.sh start failed (install garage with `cargo install garage --locked`, \
             as .ci/run does, or set STASIS_SKIP_GARAGE=1):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bucket = vars
            .iter()
            .find(|(k, _)| k == "STASIS_TEST_BUCKET")
            .map(|(_, v)| v.clone())
            .expect("bucket");
        Some(Garage { dir, vars, bucket })
    }

    /// A client of the bucket.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        self.location("")
            .client_from(self.vars.clone())
            .expect("client")
    }

    pub fn location(&self, prefix: &str) -> S3Location {
        let url = if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        };
        url.parse().expect("location")
    }

    /// A backend on `prefix` with its own cache in `cache_dir` (a "host").
    pub fn backend(&self, prefix: &str, cache_dir: &Path, budget: u64) -> RemoteBackend {
        let loc = self.location(prefix);
        let cache = PieceCache::open(cache_dir, budget, PIECE_SIZE).expect("cache");
        RemoteBackend::new(
            loc.client_from(self.vars.clone()).expect("client"),
            loc.to_string(),
            &loc.prefix,
            cache,
            Arc::new(MemoryLocks::default()),
        )
        .expect("backend")
    }

    /// The bucket's URL with `prefix`, as `stasis init --store` takes it.
    pub fn url(&self, prefix: &str) -> String {
        self.location(prefix).to_string()
    }

    fn run(&self, args: &[&str]) {
        let st = Command::new("bash")
            .arg(script())
            .args(&args[..1])
            .arg(self.dir.path())
            .args(&args[1..])
            .status()
            .expect("running tools/garage.sh");
        assert!(st.success(), "tools/garage.sh {args:?}");
    }

    /// Stop node `n` (1-based).
    pub fn stop_node(&self, n: u32) {
        self.run(&["stop", &n.to_string()]);
    }

    /// Whether node `n`'s process is running (its pid file names a live process).
    pub fn node_running(&self, n: u32) -> bool {
        std::fs::read_to_string(self.dir.path().join(format!("n{n}/pid")))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            // SAFETY: signal 0 only checks that the process exists.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
    }

    /// Start node `n` again.
    pub fn restart_node(&self, n: u32) {
        self.run(&["restart", &n.to_string()]);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // Tolerates nodes that already exited.
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
