//! A running `stasis serve` on a free loopback port, for tests outside tests/server.rs;
//! killed and reaped on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// The server.
pub struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    lines: Receiver<String>,
}

impl Serve {
    /// `stasis --repo REPO serve --listen 127.0.0.1:0 ARGS...`, once it says where it
    /// listens (bounded).
    pub fn start(repo: &Path, args: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
            .arg("--repo")
            .arg(repo)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("STASIS_LOG", "info")
            .env_remove("STASIS_REPO")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stasis serve");
        let (tx, lines) = channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut s = Serve {
            child,
            base: String::new(),
            lines,
        };
        s.base = loop {
            let line = match s.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(l) => l,
                Err(e) => panic!("stasis serve did not say where it listens: {e}"),
            };
            if let Some(addr) = line.split("listening on http://").nth(1) {
                break format!("http://{}", addr.trim());
            }
        };
        s
    }

    /// Stop it; what it logged.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.try_iter().collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
