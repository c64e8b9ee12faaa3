//! End-to-end tests of `stasis serve`: the real binary on a free port against a temp
//! repository, driven over HTTP. Readiness is awaited by polling `/health` (with a
//! generous bound), never by sleeping.

mod common;
use common::noise;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_stasis");
const BOUND: Duration = Duration::from_secs(120);

fn stasis(repo: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("STASIS_REPO")
        .output()
        .expect("run stasis");
    assert!(
        out.status.success(),
        "stasis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// A running `stasis serve`; killed on drop unless it has stopped.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Server {
    fn start(repo: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .arg("--repo")
            .arg(repo)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("STASIS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stasis serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = channel();
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut s = Server {
            child,
            base: String::new(),
            log,
            lines,
        };
        let line = s.wait_line(|l| l.contains("listening on http://"));
        let addr = line
            .split("http://")
            .nth(1)
            .expect("address")
            .trim()
            .to_string();
        s.base = format!("http://{addr}");
        let start = Instant::now();
        loop {
            if let Ok(r) = ureq::get(&format!("{}/health", s.base)).call()
                && r.status() == 200
            {
                break;
            }
            assert!(start.elapsed() < BOUND, "server not healthy in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The next stderr line matching `f` (bounded).
    fn wait_line(&mut self, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let left = BOUND.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if f(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no such line from the server; log:\n{}",
                    self.log.lock().expect("log").join("\n")
                ),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response, whatever its status.
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    fn header(&self, h: &str) -> Option<&str> {
        self.headers
            .get(&h.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// An error body: `{code, message, details}`, with this status.
    fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["details"].is_array(), "{v}");
        v
    }
}

fn req(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut r = ureq::request(method, url);
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let result = match body {
        Some(b) => r.send_bytes(b),
        None => r.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            resp.header(&n)
                .map(|v| (n.to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let mut body = Vec::new();
    resp.into_reader()
        .read_to_end(&mut body)
        .expect("read body");
    Resp {
        status,
        headers,
        body,
    }
}

fn get(s: &Server, path: &str, token: Option<&str>) -> Resp {
    req("GET", &s.url(path), token, &[], None)
}

fn post_json(s: &Server, path: &str, token: Option<&str>, body: &Value) -> Resp {
    req(
        "POST",
        &s.url(path),
        token,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// A sparse file of `size` bytes with random data at `(offset, len)` extents.
fn sparse(path: &Path, size: u64, extents: &[(u64, usize)], seed: u64) -> Vec<u8> {
    let f = File::create(path).expect("create");
    f.set_len(size).expect("size");
    for (i, (off, len)) in extents.iter().enumerate() {
        f.write_all_at(&noise(*len, seed + i as u64), *off)
            .expect("write");
    }
    fs::read(path).expect("read back")
}

struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    /// The default tenant's payload root.
    files: PathBuf,
    /// acme's payload root.
    acme_files: PathBuf,
    disk: Vec<u8>,
    mem: Vec<u8>,
}

impl Fixture {
    /// `--payload-root` for the default tenant and for acme, each its own directory.
    fn roots(&self) -> Vec<String> {
        vec![
            "--payload-root".into(),
            format!("default={}", self.files.display()),
            "--payload-root".into(),
            format!("acme={}", self.acme_files.display()),
        ]
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut args = self.roots();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&self.repo, &args)
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let files = dir.path().join("files/default");
    let acme_files = dir.path().join("files/acme");
    fs::create_dir_all(&files).expect("files dir");
    fs::create_dir_all(&acme_files).expect("files dir");
    stasis(&repo, &["init"]);
    // A 3 MiB disk with holes, and a 6 MiB memory file (ranges longer than the
    // server's one-piece limit are streamed).
    let disk = sparse(
        &files.join("disk.img"),
        3 << 20,
        &[(0, 70_000), (1 << 20, 200_000), ((3 << 20) - 5000, 5000)],
        1,
    );
    let mem = sparse(
        &files.join("mem"),
        6 << 20,
        &[(4096, 4 << 20), (5 << 20, 100_000)],
        7,
    );
    stasis(
        &repo,
        &[
            "create",
            "web",
            "base",
            "--disk",
            &format!("root={}", files.join("disk.img").display()),
            "--memory",
            &format!("mem={}", files.join("mem").display()),
            "--hypervisor",
            "firecracker",
            "--tag",
            "env=prod",
        ],
    );
    Fixture {
        _dir: dir,
        repo,
        files,
        acme_files,
        disk,
        mem,
    }
}

fn token(repo: &Path, tenant: &str, read_only: bool) -> String {
    let mut args = vec!["token", "create", "--tenant", tenant];
    if read_only {
        args.push("--read-only");
    }
    stasis(repo, &args).trim().to_string()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// The body of a 404 for `id`, with the id taken out: a foreign id must answer exactly
/// as a missing one.
fn not_found_shape(r: &Resp, id: &str) -> String {
    r.error(404, "not_found");
    String::from_utf8_lossy(&r.body).replace(id, "ID")
}

#[test]
fn every_route_status_and_tenant() {
    let fx = fixture();
    let tok = token(&fx.repo, "default", false);
    let ro = token(&fx.repo, "default", true);
    let acme = token(&fx.repo, "acme", false);
    let s = fx.serve(&[]);
    let t = Some(tok.as_str());
    let ro = Some(ro.as_str());
    let acme = Some(acme.as_str());

    // --- health and the document ---
    let h = get(&s, "/health", None);
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    get(&s, "/openapi.json", None).error(401, "unauthorized");
    let doc = get(&s, "/openapi.json", ro).json();
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/health",
        "/openapi.json",
        "/snapshots",
        "/snapshots/{id}",
        "/snapshots/{id}/fork",
        "/instances/{id}/snapshots",
        "/snapshots/{id}/payloads/{name}",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from the document");
    }
    assert!(doc["paths"]["/snapshots/{id}/payloads/{name}"]["head"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );

    // --- 401 ---
    let no_auth = get(&s, "/snapshots", None);
    no_auth.error(401, "unauthorized");
    assert!(no_auth.header("www-authenticate").is_some());
    get(&s, "/snapshots", Some("stasis_00")).error(401, "unauthorized");
    req(
        "GET",
        &s.url("/snapshots"),
        None,
        &[("Authorization", "Basic dXNlcg==")],
        None,
    )
    .error(401, "unauthorized");

    // --- list and filters (the CLI's VM is the default tenant's) ---
    let list = get(&s, "/snapshots", t).json();
    let base = list.as_array().expect("array")[0].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let base_id = id_of(&base);
    assert_eq!(base["tenant"], "default");
    // JSON names and values are the catalog record's: exactly `stasis show --json`.
    let shown: Value =
        serde_json::from_str(&stasis(&fx.repo, &["--json", "show", &base_id])).expect("show");
    assert_eq!(get(&s, &format!("/snapshots/{base_id}"), t).json(), shown);
    let count = |q: &str| -> usize {
        let r = get(&s, &format!("/snapshots?{q}"), t);
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        r.json().as_array().expect("array").len()
    };
    assert_eq!(count("source_instance_id=web"), 1);
    assert_eq!(
        count(&format!(
            "source_instance_id={}",
            base["source_instance_id"].as_str().expect("vm")
        )),
        1
    );
    assert_eq!(count("source_instance_id=nope"), 0);
    assert_eq!(count("kind=Standby"), 1);
    assert_eq!(count("kind=Stopped"), 0);
    assert_eq!(count("name=base"), 1);
    assert_eq!(count("name=other"), 0);
    assert_eq!(count("tags%5Benv%5D=prod"), 1);
    assert_eq!(count("tags[env]=prod"), 1);
    assert_eq!(count("tags[env]=dev"), 0);
    assert_eq!(count("tags[env]=prod&tags[team]=x"), 0);
    assert_eq!(count("status=active"), 1);
    assert_eq!(count("status=deleted"), 0);
    assert_eq!(count(&format!("parent_id={base_id}")), 0);
    assert_eq!(count("expired=false"), 1);
    assert_eq!(count("expired=true"), 0);
    assert_eq!(count("limit=0"), 0);
    for bad in [
        "kind=Paused",
        "status=gone",
        "tags[bad;key]=x",
        "tags[]=x",
        "limit=abc",
        "limit=-1",
        "expired=maybe",
        "colour=red",
        "name=a&name=b",
    ] {
        get(&s, &format!("/snapshots?{bad}"), t).error(400, "bad_request");
    }

    // --- create over HTTP (acme's VM, from a payload under the root) ---
    let acme_disk = sparse(
        &fx.acme_files.join("acme.img"),
        1 << 20,
        &[(8192, 300_000)],
        99,
    );
    let acme_req = json!({
        "kind": "Stopped",
        "name": "a1",
        "tags": {"owner": "acme"},
        "source_hypervisor": "qemu",
        "payloads": [{"name": "root", "role": "disk", "path": fx.acme_files.join("acme.img")}]
    });
    let r = post_json(&s, "/instances/acme-vm/snapshots", acme, &acme_req);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let a1 = r.json();
    let a1_id = id_of(&a1);
    assert_eq!(
        r.header("location"),
        Some(format!("/snapshots/{a1_id}").as_str())
    );
    assert_eq!(a1["tenant"], "acme");
    assert_eq!(a1["source_instance_name"], "acme-vm");
    assert_eq!(a1["source_hypervisor"], "qemu");
    assert_eq!(a1["is_current"], true);
    let acme_vm_id = a1["source_instance_id"]
        .as_str()
        .expect("vm id")
        .to_string();
    // The catalog agrees.
    let shown: Value =
        serde_json::from_str(&stasis(&fx.repo, &["--json", "show", &a1_id])).expect("show");
    assert_eq!(shown, a1);

    // Each tenant lists only its own.
    let ids = |tok| -> Vec<String> {
        get(&s, "/snapshots", tok)
            .json()
            .as_array()
            .expect("array")
            .iter()
            .map(id_of)
            .collect()
    };
    assert_eq!(ids(t), vec![base_id.clone()]);
    assert_eq!(ids(acme), vec![a1_id.clone()]);
    assert_eq!(count(&format!("source_instance_id={acme_vm_id}")), 0);

    // --- cross-tenant: every route answers a foreign id exactly as a missing one ---
    let missing = "zzzzzzzzzzzzzzzzzzzzzzzz";
    let pairs: Vec<(Resp, Resp)> = vec![
        (
            get(&s, &format!("/snapshots/{a1_id}"), t),
            get(&s, &format!("/snapshots/{missing}"), t),
        ),
        (
            req(
                "DELETE",
                &s.url(&format!("/snapshots/{a1_id}")),
                t,
                &[],
                None,
            ),
            req(
                "DELETE",
                &s.url(&format!("/snapshots/{missing}")),
                t,
                &[],
                None,
            ),
        ),
        (
            post_json(
                &s,
                &format!("/snapshots/{a1_id}/fork"),
                t,
                &json!({"name": "steal"}),
            ),
            post_json(
                &s,
                &format!("/snapshots/{missing}/fork"),
                t,
                &json!({"name": "steal"}),
            ),
        ),
        (
            get(&s, &format!("/snapshots/{a1_id}/payloads/root"), t),
            get(&s, &format!("/snapshots/{missing}/payloads/root"), t),
        ),
        (
            get(&s, &format!("/snapshots/{base_id}/payloads/root"), acme),
            get(&s, &format!("/snapshots/{missing}/payloads/root"), acme),
        ),
    ];
    for (foreign, absent) in &pairs {
        let fid = [a1_id.as_str(), base_id.as_str()]
            .into_iter()
            .find(|i| String::from_utf8_lossy(&foreign.body).contains(i))
            .expect("the id is named");
        assert_eq!(
            not_found_shape(foreign, fid),
            not_found_shape(absent, missing)
        );
    }
    for (id, tok) in [(&a1_id, t), (&base_id, acme)] {
        let h = req(
            "HEAD",
            &s.url(&format!("/snapshots/{id}/payloads/root")),
            tok,
            &[],
            None,
        );
        assert_eq!(h.status, 404);
        assert!(h.body.is_empty());
    }
    // Another tenant's VM, by name or id, is not there to snapshot.
    let steal = json!({"kind": "Stopped", "name": "x", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk.img")}]});
    // (A name nobody uses makes a new VM of the caller's tenant, so the only "missing"
    // instance is a foreign one: 404, naming nothing but what was asked.)
    for vm in ["acme-vm", acme_vm_id.as_str()] {
        let r = post_json(&s, &format!("/instances/{vm}/snapshots"), t, &steal);
        assert_eq!(
            not_found_shape(&r, vm),
            r#"{"code":"not_found","message":"instance \"ID\" not found","details":[]}"#
        );
    }
    // A foreign parent is not found either.
    let with_parent = json!({"kind": "Stopped", "name": "p", "parent_id": a1_id, "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk.img")}]});
    post_json(&s, "/instances/web/snapshots", t, &with_parent).error(404, "not_found");
    // Nothing of the default tenant changed.
    assert_eq!(ids(t), vec![base_id.clone()]);
    assert_eq!(ids(acme), vec![a1_id.clone()]);

    // --- read-only: 403 on every write, before anything else ---
    post_json(&s, "/instances/web/snapshots", ro, &steal).error(403, "forbidden");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        ro,
        &json!({"name": "f"}),
    )
    .error(403, "forbidden");
    req(
        "DELETE",
        &s.url(&format!("/snapshots/{base_id}")),
        ro,
        &[],
        None,
    )
    .error(403, "forbidden");
    // ... and reads work.
    assert_eq!(get(&s, &format!("/snapshots/{base_id}"), ro).status, 200);

    // --- create: a child of the current snapshot; then every refusal ---
    let disk2 = {
        let mut d = fx.disk.clone();
        d[10..20].copy_from_slice(b"0123456789");
        fs::write(fx.files.join("disk2.img"), &d).expect("write");
        d
    };
    let mk = |name: &str| {
        json!({
            "kind": "Stopped",
            "name": name,
            "tags": {"env": "prod"},
            "compression": {"enabled": true, "algorithm": "lz4", "level": 0},
            "description": "second",
            "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]
        })
    };
    let r = post_json(&s, "/instances/web/snapshots", t, &mk("day2"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let day2 = r.json();
    let day2_id = id_of(&day2);
    assert_eq!(day2["parent_id"], base_id.as_str());
    assert_eq!(day2["compression"]["algorithm"], "lz4");
    assert_eq!(count(&format!("parent_id={base_id}")), 1);
    post_json(&s, "/instances/web/snapshots", t, &mk("day2")).error(409, "conflict");
    let bad_bodies = [
        json!({"name": "nokind", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Paused", "name": "k", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "Bad_Name", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "t", "tags": {"bad;key": "v"}, "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "e", "payloads": []}),
        json!({"kind": "Stopped", "name": "r", "payloads": [{"name": "root", "role": "tape", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "dup", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}, {"name": "root", "role": "state", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "c", "compression": {"enabled": true, "algorithm": "zstd", "level": 99}, "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "x", "expires_at": "tomorrow", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!({"kind": "Stopped", "name": "d", "diff": true, "parent_id": base_id, "payloads": [{"name": "nosuch", "role": "disk", "path": fx.files.join("disk2.img")}]}),
        json!([1, 2, 3]),
    ];
    for b in &bad_bodies {
        let r = post_json(&s, "/instances/web/snapshots", t, b);
        assert_eq!(r.status, 400, "{b}: {}", String::from_utf8_lossy(&r.body));
        r.error(400, "bad_request");
    }
    req(
        "POST",
        &s.url("/instances/web/snapshots"),
        t,
        &[("Content-Type", "application/json")],
        Some(b"{not json"),
    )
    .error(400, "bad_request");
    post_json(&s, "/instances/Bad_VM/snapshots", t, &mk("v")).error(400, "bad_request");
    // Paths the caller may not use get the one refusal (tests `tenant_boundary` has
    // every kind).
    for path in [
        "/etc/hostname".to_string(),
        fx.files.join("missing.img").display().to_string(),
        "files/disk2.img".into(),
        fx.acme_files.join("acme.img").display().to_string(),
    ] {
        let b = json!({"kind": "Stopped", "name": "o", "payloads": [{"name": "root", "role": "disk", "path": path}]});
        post_json(&s, "/instances/web/snapshots", t, &b).error(403, "path_refused");
    }
    req(
        "POST",
        &s.url("/instances/web/snapshots"),
        t,
        &[],
        Some(mk("ct").to_string().as_bytes()),
    )
    .error(415, "unsupported_media_type");
    // A body over the limit is refused from its Content-Length, before it is read; the
    // client here sends only its start, so it is not cut off while writing the rest.
    {
        let addr = s.base.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        // A bound so a server that waits for the rest of the body fails the test
        // instead of hanging it.
        c.set_read_timeout(Some(std::time::Duration::from_secs(120)))
            .expect("timeout");
        let head = format!(
            "POST /instances/web/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"kind\": \"Stopped\", \"description\": \"",
            tok,
            2 << 20
        );
        std::io::Write::write_all(&mut c, head.as_bytes()).expect("send");
        // Read the head, then exactly the body its Content-Length gives (the server
        // need not close the connection).
        let mut resp = Vec::new();
        let mut byte = [0u8; 1];
        while !resp.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).expect("response head");
            resp.push(byte[0]);
        }
        let head_text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
        let len: usize = head_text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).expect("response body");
        resp.extend_from_slice(&body);
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains(r#""code":"payload_too_large""#), "{text}");
    }
    // No half-made snapshot from any refusal.
    assert_eq!(count("source_instance_id=web"), 2);

    // --- payloads: whole, ranges, HEAD ---
    let whole = |id: &str, name: &str| get(&s, &format!("/snapshots/{id}/payloads/{name}"), t);
    let r = whole(&base_id, "root");
    assert_eq!(r.status, 200);
    assert!(r.body == fx.disk, "disk differs");
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let r = whole(&base_id, "mem");
    assert!(r.body == fx.mem, "memory (streamed) differs");
    assert!(whole(&day2_id, "root").body == disk2);
    let range = |name: &str, spec: &str| {
        req(
            "GET",
            &s.url(&format!("/snapshots/{base_id}/payloads/{name}")),
            t,
            &[("Range", spec)],
            None,
        )
    };
    let size = fx.disk.len();
    for (spec, lo, hi) in [
        ("bytes=0-0", 0, 1),
        ("bytes=100-199", 100, 200),
        ("bytes=65500-65600", 65500, 65601),
        ("bytes=1048570-", 1048570, size),
        ("bytes=-500", size - 500, size),
        ("bytes=-99999999", 0, size),
        ("bytes=3000000-99999999", 3_000_000, size),
    ] {
        let r = range("root", spec);
        assert_eq!(r.status, 206, "{spec}");
        assert!(r.body == fx.disk[lo..hi], "{spec}: bytes differ");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {lo}-{}/{size}", hi - 1).as_str()),
            "{spec}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((hi - lo).to_string().as_str())
        );
    }
    // A range longer than one piece is streamed, and still byte-identical.
    let r = range("mem", "bytes=1000-5500000");
    assert_eq!(r.status, 206);
    assert!(r.body == fx.mem[1000..5_500_001]);
    for spec in [
        format!("bytes={size}-"),
        "bytes=-0".to_string(),
        format!("bytes={}-{}", size + 10, size + 20),
    ] {
        let r = range("root", &spec);
        r.error(416, "range_not_satisfiable");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
    }
    // An unparsable Range is ignored: the whole payload.
    let r = range("root", "bytes=oops");
    assert_eq!(r.status, 200);
    assert!(r.body == fx.disk);
    // If-Range with the current ETag honours the range; a stale one gives everything.
    let etag = whole(&base_id, "root")
        .header("etag")
        .expect("etag")
        .to_string();
    let r = req(
        "GET",
        &s.url(&format!("/snapshots/{base_id}/payloads/root")),
        t,
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
        None,
    );
    assert_eq!((r.status, r.body.len()), (206, 10));
    let r = req(
        "GET",
        &s.url(&format!("/snapshots/{base_id}/payloads/root")),
        t,
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
        None,
    );
    assert_eq!((r.status, r.body.len()), (200, size));
    let h = req(
        "HEAD",
        &s.url(&format!("/snapshots/{base_id}/payloads/mem")),
        t,
        &[],
        None,
    );
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(fx.mem.len().to_string().as_str())
    );
    assert!(h.body.is_empty());
    get(&s, &format!("/snapshots/{base_id}/payloads/nope"), t).error(404, "not_found");
    get(&s, &format!("/snapshots/{base_id}/payloads/root"), None).error(401, "unauthorized");
    // acme reads its own.
    let r = get(&s, &format!("/snapshots/{a1_id}/payloads/root"), acme);
    assert!(r.body == acme_disk);

    // --- fork ---
    let r = post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "clone1"}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let inst = r.json();
    assert_eq!(inst["name"], "clone1");
    assert_eq!(inst["state"], "Standby");
    assert_eq!(inst["hypervisor"], "firecracker");
    assert_eq!(inst["forked_from"], base_id.as_str());
    // In the default tenant's own instances directory.
    let real_repo = fs::canonicalize(&fx.repo).expect("repo");
    assert_eq!(
        inst["dir"],
        real_repo
            .join("instances/default/clone1")
            .display()
            .to_string()
    );
    for f in inst["files"].as_array().expect("files") {
        let got = fs::read(f["path"].as_str().expect("path")).expect("forked file");
        let want = if f["name"] == "root" {
            &fx.disk
        } else {
            &fx.mem
        };
        assert!(&got == want, "forked {} differs", f["name"]);
        assert_eq!(f["how"], "sparse copy");
    }
    // The fork is the default tenant's VM, visible to the CLI as forked from base.
    let tree = stasis(&fx.repo, &["tree", "clone1"]);
    assert!(tree.contains(&format!("forked from {base_id}")), "{tree}");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "clone1"}),
    )
    .error(409, "conflict");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "web"}),
    )
    .error(409, "conflict");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "c2", "target_state": "Running"}),
    )
    .error(409, "conflict");
    post_json(
        &s,
        &format!("/snapshots/{day2_id}/fork"),
        t,
        &json!({"name": "c3", "target_state": "Standby"}),
    )
    .error(409, "conflict");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "c4", "target_hypervisor": "qemu"}),
    )
    .error(409, "conflict");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "Bad Name"}),
    )
    .error(400, "bad_request");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "c5", "target_state": "Flying"}),
    )
    .error(400, "bad_request");
    post_json(&s, &format!("/snapshots/{base_id}/fork"), t, &json!({})).error(400, "bad_request");
    let r = post_json(
        &s,
        &format!("/snapshots/{day2_id}/fork"),
        t,
        &json!({"name": "c6", "target_hypervisor": "qemu"}),
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        (r.json()["state"].clone(), r.json()["hypervisor"].clone()),
        (json!("Stopped"), json!("qemu"))
    );

    // --- delete: a parent is consolidated into its child; then it is gone ---
    assert_eq!(
        req(
            "DELETE",
            &s.url(&format!("/snapshots/{base_id}")),
            t,
            &[],
            None
        )
        .status,
        204
    );
    let child = get(&s, &format!("/snapshots/{day2_id}"), t).json();
    assert_eq!(
        child["parent_id"],
        Value::Null,
        "re-parented to base's parent (none)"
    );
    // Gone for hypeman's clients; still there (until gc) when asked for explicitly.
    get(&s, &format!("/snapshots/{base_id}"), t).error(404, "not_found");
    assert_eq!(
        get(&s, &format!("/snapshots/{base_id}?include_deleted=true"), t).json()["status"],
        "deleted"
    );
    get(
        &s,
        &format!("/snapshots/{base_id}?include_deleted=maybe"),
        t,
    )
    .error(400, "bad_request");
    assert_eq!(count("status=deleted"), 1);
    req(
        "DELETE",
        &s.url(&format!("/snapshots/{base_id}")),
        t,
        &[],
        None,
    )
    .error(404, "not_found");
    // The child still reads back whole.
    assert!(whole(&day2_id, "root").body == disk2);

    // --- unknown routes and methods ---
    get(&s, "/nope", t).error(404, "not_found");
    req("PUT", &s.url("/snapshots"), t, &[], None).error(405, "method_not_allowed");

    // --- a revoked token stops working at once ---
    let ro_id = {
        let v: Value =
            serde_json::from_str(&stasis(&fx.repo, &["--json", "token", "list"])).expect("list");
        v.as_array()
            .expect("array")
            .iter()
            .find(|t| t["read_only"] == true)
            .map(id_of)
            .expect("the read-only token")
    };
    stasis(&fx.repo, &["token", "revoke", &ro_id]);
    get(&s, "/snapshots", ro).error(401, "unauthorized");
    assert_eq!(get(&s, "/snapshots", t).status, 200);
}

#[test]
fn creates_and_forks_beyond_the_limit_get_429() {
    let fx = fixture();
    let tok = token(&fx.repo, "default", false);
    let s = fx.serve(&["--max-ingests", "0"]);
    let t = Some(tok.as_str());
    let base_id = id_of(&get(&s, "/snapshots", t).json()[0]);
    let body = json!({"kind": "Stopped", "name": "n", "payloads": [{"name": "root", "role": "disk", "path": fx.files.join("disk.img")}]});
    post_json(&s, "/instances/web/snapshots", t, &body).error(429, "too_many_ingests");
    post_json(
        &s,
        &format!("/snapshots/{base_id}/fork"),
        t,
        &json!({"name": "f"}),
    )
    .error(429, "too_many_ingests");
    // Reads are not limited.
    assert_eq!(
        get(&s, &format!("/snapshots/{base_id}/payloads/root"), t).status,
        200
    );

    // Clients that hang up in the middle of a large response do not take the server
    // down (a broken pipe is an error on that connection only).
    let addr = s.base.trim_start_matches("http://").to_string();
    for _ in 0..8 {
        let mut c = std::net::TcpStream::connect(&addr).expect("connect");
        let request = format!(
            "GET /snapshots/{base_id}/payloads/mem HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            tok
        );
        std::io::Write::write_all(&mut c, request.as_bytes()).expect("send");
        let mut some = [0u8; 4096];
        c.read_exact(&mut some).expect("the response starts");
        drop(c);
    }
    let r = get(&s, &format!("/snapshots/{base_id}/payloads/mem"), t);
    assert_eq!(r.status, 200);
    assert!(r.body == fx.mem);
    assert_eq!(get(&s, "/health", None).status, 200);
}

#[test]
fn sigterm_lets_a_running_create_finish() {
    let fx = fixture();
    let t = token(&fx.repo, "default", false);
    let big = fx.files.join("big.img");
    fs::write(&big, noise(96 << 20, 42)).expect("big file");
    let mut s = fx.serve(&[]);
    let url = s.url("/instances/big/snapshots");
    let body = json!({"kind": "Stopped", "name": "b", "payloads": [{"name": "root", "role": "disk", "path": big}]});
    let tt = t.clone();
    let client = std::thread::spawn(move || {
        req(
            "POST",
            &url,
            Some(&tt),
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    });
    // Once the server has taken the request, ask it to stop.
    s.wait_line(|l| l.contains("uri=/instances/big/snapshots") && l.contains("started"));
    // SAFETY: signalling our own child process.
    let rc = unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let r = client.join().expect("client");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = id_of(&r.json());
    let status = s.child.wait().expect("wait");
    assert!(status.success(), "serve exited with {status}");
    let log = s.log.lock().expect("log").join("\n");
    assert!(log.contains("shutting down"), "{log}");
    // The snapshot is whole: listed, active, and reads back.
    let shown: Value =
        serde_json::from_str(&stasis(&fx.repo, &["--json", "show", &id])).expect("show");
    assert_eq!(shown["status"], "active");
    let out = fx.files.join("restored");
    stasis(&fx.repo, &["restore", &id, out.to_str().expect("utf8")]);
    assert!(fs::read(out.join("root")).expect("restored") == fs::read(&big).expect("big"));
}

/// Run `stasis serve` with `args` and expect it to refuse to start: its stderr. A
/// server that starts anyway is killed at the bound and fails the test.
fn serve_refused(repo: &Path, args: &[String]) -> String {
    let mut child = Command::new(BIN)
        .arg("--repo")
        .arg(repo)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stasis serve");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stasis serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!status.success(), "serve {args:?} exited 0: {err}");
    err
}

/// The attacks of an ordinary token on files that are not its tenant's: every one is
/// answered with the same refusal, byte for byte, and creates no snapshot.
#[test]
fn tenant_boundary() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    stasis(&repo, &["init"]);
    let vms = dir.path().join("vms");
    let (acme_dir, globex_dir) = (vms.join("acme"), vms.join("globex"));
    fs::create_dir_all(&acme_dir).expect("mkdir");
    fs::create_dir_all(&globex_dir).expect("mkdir");
    let secret = sparse(&globex_dir.join("disk.raw"), 1 << 20, &[(0, 200_000)], 5);
    let own = sparse(&acme_dir.join("disk.raw"), 1 << 20, &[(4096, 100_000)], 6);
    let acme = token(&repo, "acme", false);
    let globex = token(&repo, "globex", false);
    let admin = stasis(&repo, &["token", "create", "--tenant", "ops", "--admin"])
        .trim()
        .to_string();
    let roots = [
        "--payload-root".to_string(),
        format!("acme={}", acme_dir.display()),
        "--payload-root".into(),
        format!("globex={}", globex_dir.display()),
        // A server-wide root, for admin tokens only.
        "--payload-root".into(),
        vms.display().to_string(),
    ];
    let args: Vec<&str> = roots.iter().map(String::as_str).collect();
    let s = Server::start(&repo, &args);
    let (a, g) = (Some(acme.as_str()), Some(globex.as_str()));
    let body = |name: &str, path: &Path| json!({"kind": "Stopped", "name": name, "payloads": [{"name": "d", "role": "disk", "path": path}]});
    let count = |tok| {
        get(&s, "/snapshots", tok)
            .json()
            .as_array()
            .expect("array")
            .len()
    };

    // Things to try, made inside acme's own root where a name must be there.
    symlink(globex_dir.join("disk.raw"), acme_dir.join("abs-out")).expect("link");
    symlink("../globex/disk.raw", acme_dir.join("rel-out")).expect("link");
    symlink("/proc/self/root/etc/hostname", acme_dir.join("proc-link")).expect("link");
    symlink("/dev/zero", acme_dir.join("dev-link")).expect("link");
    fs::hard_link(globex_dir.join("disk.raw"), acme_dir.join("hard")).expect("hard link");
    fs::create_dir(acme_dir.join("subdir")).expect("mkdir");
    let fifo = acme_dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstr");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let chr = acme_dir.join("null");
    let c = std::ffi::CString::new(chr.to_str().expect("utf8")).expect("cstr");
    // SAFETY: a valid NUL-terminated path; /dev/null's device number (1, 3).
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod (the tests run as root)");
    // A qcow2 image in acme's root whose backing file is globex's disk.
    let evil = acme_dir.join("evil.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(globex_dir.join("disk.raw"))
        .arg(&evil)
        .status()
        .expect("qemu-img (install qemu-utils)");
    assert!(st.success());

    let p = |x: &str| PathBuf::from(x);
    let attacks: Vec<(&str, PathBuf)> = vec![
        ("another tenant's file", globex_dir.join("disk.raw")),
        (
            "a missing file outside every root",
            p("/nonexistent/disk.raw"),
        ),
        ("an existing file outside every root", p("/etc/hostname")),
        ("a missing file in its own root", acme_dir.join("missing")),
        ("'..' out of its root", acme_dir.join("../globex/disk.raw")),
        (
            "'..' that stays inside",
            acme_dir.join("subdir/../disk.raw"),
        ),
        ("an absolute symlink out", acme_dir.join("abs-out")),
        ("a relative symlink out", acme_dir.join("rel-out")),
        ("a symlink through /proc", acme_dir.join("proc-link")),
        ("a symlink to a device", acme_dir.join("dev-link")),
        (
            "a hard link to another tenant's file",
            acme_dir.join("hard"),
        ),
        ("a directory", acme_dir.join("subdir")),
        ("its root itself", acme_dir.clone()),
        ("a FIFO", fifo.clone()),
        ("a character device", chr.clone()),
        ("/proc/self/environ", p("/proc/self/environ")),
        ("/proc/self/fd/0", p("/proc/self/fd/0")),
        ("/proc/self/root", p("/proc/self/root/etc/hostname")),
        ("a relative path", p("vms/acme/disk.raw")),
        ("an empty path", p("")),
        ("the server-wide root's files", vms.join("globex/disk.raw")),
        ("a qcow2 backed by another tenant's file", evil.clone()),
        ("the repository's catalog", repo.join("catalog.db")),
    ];
    let mut first: Option<Vec<u8>> = None;
    for (what, path) in &attacks {
        let r = post_json(&s, "/instances/web/snapshots", a, &body("x", path));
        assert_eq!(
            r.status,
            403,
            "{what} ({}): {}",
            path.display(),
            String::from_utf8_lossy(&r.body)
        );
        r.error(403, "path_refused");
        match &first {
            None => first = Some(r.body.clone()),
            Some(f) => assert!(
                *f == r.body,
                "{what}: not the one refusal: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    let refusal = String::from_utf8(first.expect("some attack")).expect("utf8");
    assert_eq!(
        refusal,
        r#"{"code":"path_refused","message":"payload path refused","details":[]}"#
    );
    assert_eq!(count(a), 0, "no snapshot was created");
    // The operator's log has each reason.
    assert!(
        s.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("payload path refused") && l.contains("links")),
        "the log says why"
    );

    // What acme may do: its own file, and a symlink that stays inside its root.
    symlink("disk.raw", acme_dir.join("inside")).expect("link");
    for (name, path) in [
        ("own", acme_dir.join("disk.raw")),
        ("via-link", acme_dir.join("inside")),
    ] {
        let r = post_json(&s, "/instances/web/snapshots", a, &body(name, &path));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let id = id_of(&r.json());
        assert!(get(&s, &format!("/snapshots/{id}/payloads/d"), a).body == own);
    }
    assert_eq!(count(a), 2);

    // A symlink swapped back and forth during the requests: every answer is acme's own
    // bytes or the refusal, never globex's, however the swaps and opens interleave.
    let flip = acme_dir.join("flip");
    let (stop_tx, stop_rx) = channel::<()>();
    let (acme_d, globex_d) = (acme_dir.clone(), globex_dir.clone());
    let swapper = std::thread::spawn(move || {
        let (good, bad, tmp) = (
            acme_d.join("flip.good"),
            acme_d.join("flip.bad"),
            acme_d.join("flip.tmp"),
        );
        symlink("disk.raw", &good).expect("link");
        symlink(globex_d.join("disk.raw"), &bad).expect("link");
        let mut n = 0u64;
        while stop_rx.try_recv().is_err() && n < 1_000_000 {
            let target = if n.is_multiple_of(2) { &good } else { &bad };
            let _ = fs::remove_file(&tmp);
            symlink(fs::read_link(target).expect("readlink"), &tmp).expect("link");
            fs::rename(&tmp, acme_d.join("flip")).expect("swap");
            n += 1;
        }
        n
    });
    let mut made = 0;
    for i in 0..30 {
        let r = post_json(
            &s,
            "/instances/flip/snapshots",
            a,
            &body(&format!("f{i}"), &flip),
        );
        match r.status {
            201 => {
                let id = id_of(&r.json());
                let got = get(&s, &format!("/snapshots/{id}/payloads/d"), a).body;
                assert!(got == own, "a swapped link leaked another file's bytes");
                assert!(got != secret);
                made += 1;
            }
            403 => assert_eq!(String::from_utf8_lossy(&r.body), refusal),
            other => panic!("flip {i}: {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let _ = stop_tx.send(());
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 0);
    assert_eq!(count(a), 2 + made);

    // Forks go to the tenant's own instances directory; it may snapshot its fork's
    // files again, and another tenant may not name them.
    let own_id = get(&s, "/snapshots?name=own", a).json()[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let inst = post_json(
        &s,
        &format!("/snapshots/{own_id}/fork"),
        a,
        &json!({"name": "acme-fork"}),
    );
    assert_eq!(inst.status, 201, "{}", String::from_utf8_lossy(&inst.body));
    let inst = inst.json();
    let fork_dir = fs::canonicalize(&repo)
        .expect("repo")
        .join("instances/acme/acme-fork");
    assert_eq!(inst["dir"], fork_dir.display().to_string());
    let forked = fork_dir.join("d");
    assert!(fs::read(&forked).expect("forked") == own);
    let r = post_json(
        &s,
        "/instances/acme-fork/snapshots",
        a,
        &body("again", &forked),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = post_json(&s, "/instances/gweb/snapshots", g, &body("steal", &forked));
    assert_eq!(String::from_utf8_lossy(&r.body), refusal);
    assert_eq!(count(g), 0);
    // globex, in turn, reaches its own files; but not while a second name of its disk
    // (acme's hard link) exists.
    let gdisk = globex_dir.join("disk.raw");
    let r = post_json(&s, "/instances/gweb/snapshots", g, &body("g1", &gdisk));
    assert_eq!(String::from_utf8_lossy(&r.body), refusal);
    fs::remove_file(acme_dir.join("hard")).expect("unlink");
    let r = post_json(&s, "/instances/gweb/snapshots", g, &body("g1", &gdisk));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // The admin scope reaches the server-wide root.
    let r = post_json(
        &s,
        "/instances/opsvm/snapshots",
        Some(admin.as_str()),
        &body("all", &vms.join("globex/disk.raw")),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // The document names no directory of the host.
    let doc = String::from_utf8(get(&s, "/openapi.json", a).body).expect("utf8");
    assert!(!doc.contains(vms.to_str().expect("utf8")));
    drop(s);

    // Layouts that would let one tenant reach another's files do not start.
    let overlapping = [
        (
            vec![
                format!("acme={}", vms.display()),
                format!("globex={}", globex_dir.display()),
            ],
            "overlap",
        ),
        (vec![format!("acme={}", dir.path().display())], "repository"),
        (
            vec![format!("acme={}", repo.join("instances").display())],
            "instances",
        ),
    ];
    for (specs, says) in overlapping {
        let args: Vec<String> = specs
            .iter()
            .flat_map(|r| ["--payload-root".to_string(), r.clone()])
            .collect();
        let err = serve_refused(&repo, &args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let err = serve_refused(&repo, &["--payload-root".into(), "Bad=/tmp".into()]);
    assert!(err.contains("tenant"), "{err}");
}

/// hypeman's body alone (`{kind, name}`) snapshots a registered instance: its files,
/// between its hooks, each opened beneath the tenant's roots. Another tenant's instance
/// does not exist for the caller; a file outside the roots is refused; a failing hook is
/// `hook_failed` with nothing recorded and nothing of its output sent.
#[test]
fn an_instance_is_snapshotted_by_name_through_the_api() {
    let f = fixture();
    let log = f.files.join("hooks.log");
    stasis(
        &f.repo,
        &[
            "instance",
            "add",
            "web",
            "--hypervisor",
            "firecracker",
            "--disk",
            &format!("root={}", f.files.join("disk.img").display()),
            "--memory",
            &format!("mem={}", f.files.join("mem").display()),
            "--pre-snapshot",
            &format!("echo \"pre $STASIS_SNAPSHOT\" >> {}", log.display()),
            "--post-snapshot",
            &format!("echo \"post $STASIS_SNAPSHOT\" >> {}", log.display()),
        ],
    );
    // acme's VM whose file lies in the default tenant's root, and one whose hook fails.
    for (vm, hook) in [
        ("stray", "true"),
        ("stuck", "echo /secret/host/path >&2; exit 4"),
    ] {
        stasis(
            &f.repo,
            &[
                "instance",
                "add",
                vm,
                "--tenant",
                "acme",
                "--hypervisor",
                "qemu",
                "--disk",
                &format!("root={}", f.files.join("disk.img").display()),
                "--pre-snapshot",
                hook,
            ],
        );
    }
    let s = f.serve(&[]);
    let mine = token(&f.repo, "default", false);
    let acme = token(&f.repo, "acme", false);
    let body = json!({"kind": "Standby", "name": "by-name"});
    let r = post_json(&s, "/instances/web/snapshots", Some(&mine), &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let snap = r.json();
    assert_eq!(snap["source_hypervisor"], "firecracker");
    assert_eq!(snap["kind"], "Standby");
    assert_eq!(
        fs::read_to_string(&log).expect("hook log"),
        "pre by-name\npost by-name\n"
    );
    let id = id_of(&snap);
    let back = tempfile::tempdir().expect("tempdir");
    stasis(
        &f.repo,
        &["restore", &id, back.path().to_str().expect("utf8")],
    );
    assert!(fs::read(back.path().join("root")).expect("root") == f.disk);
    assert!(fs::read(back.path().join("mem")).expect("mem") == f.mem);

    // Another tenant's instance is one that does not exist; so is a VM that is no
    // instance, for a body without payloads.
    not_found_shape(
        &post_json(&s, "/instances/web/snapshots", Some(&acme), &body),
        "web",
    );
    not_found_shape(
        &post_json(&s, "/instances/nope/snapshots", Some(&mine), &body),
        "nope",
    );
    // acme's instance names a file of the default tenant's root: refused.
    let r = post_json(&s, "/instances/stray/snapshots", Some(&acme), &body);
    r.error(403, "path_refused");
    // A failing hook: 500 hook_failed, its output in the log only, nothing recorded.
    let r = post_json(&s, "/instances/stuck/snapshots", Some(&acme), &body);
    let e = r.error(500, "hook_failed");
    assert!(!e.to_string().contains("/secret/host/path"), "{e}");
    let list = get(&s, "/snapshots?source_instance_id=stuck", Some(&acme)).json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

fn send_json(s: &Server, method: &str, path: &str, token: Option<&str>, body: &Value) -> Resp {
    req(
        method,
        &s.url(path),
        token,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// hypeman's restore: a registered instance's files are put back from its snapshot
/// between its restore hooks, with hypeman's defaults and refusals of target state and
/// hypervisor; the snapshot becomes the VM's current one, on its timeline.
#[test]
fn an_instance_is_restored_to_its_snapshot_through_the_api() {
    let f = fixture();
    let log = f.files.join("restore.log");
    let (disk, mem) = (f.files.join("app.img"), f.files.join("app.mem"));
    fs::write(&disk, &f.disk).expect("disk");
    fs::write(&mem, &f.mem).expect("mem");
    stasis(
        &f.repo,
        &[
            "instance",
            "add",
            "app",
            "--hypervisor",
            "firecracker",
            "--disk",
            &format!("root={}", disk.display()),
            "--memory",
            &format!("mem={}", mem.display()),
            "--pre-restore",
            &format!(
                "echo \"pre $STASIS_TARGET_STATE $STASIS_HYPERVISOR $STASIS_SNAPSHOT_ID\" >> {}",
                log.display()
            ),
            "--post-restore",
            &format!("echo \"post $STASIS_TARGET_STATE\" >> {}", log.display()),
        ],
    );
    let s = f.serve(&[]);
    let mine = token(&f.repo, "default", false);
    let acme = token(&f.repo, "acme", false);
    let ro = token(&f.repo, "default", true);
    let r = post_json(
        &s,
        "/instances/app/snapshots",
        Some(&mine),
        &json!({"kind": "Standby", "name": "s1"}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = id_of(&r.json());
    let path = format!("/instances/app/snapshots/{id}/restore");

    // The VM ran on: both files changed. The default for a Standby snapshot with a
    // post-restore hook is Running.
    fs::write(&disk, noise(f.disk.len(), 99)).expect("disk");
    fs::write(&mem, noise(1000, 98)).expect("mem");
    let r = post_json(&s, &path, Some(&mine), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let inst = r.json();
    for k in ["id", "name", "image", "state", "created_at"] {
        assert!(
            inst[k].as_str().is_some_and(|v| !v.is_empty()),
            "{k}: {inst}"
        );
    }
    assert_eq!(inst["name"], "app");
    assert_eq!(inst["state"], "Running");
    assert_eq!(inst["hypervisor"], "firecracker");
    assert_eq!(inst["restored_from"], id.as_str());
    assert!(fs::read(&disk).expect("disk") == f.disk, "disk restored");
    assert!(fs::read(&mem).expect("mem") == f.mem, "memory restored");
    assert_eq!(
        fs::read_to_string(&log).expect("log"),
        format!("pre Running firecracker {id}\npost Running\n")
    );
    let timeline = stasis(&f.repo, &["log", &id]);
    assert!(timeline.contains("restored"), "{timeline}");

    // A Standby snapshot resumes only on its own hypervisor; Stopped boots anywhere
    // and puts back the disks only, leaving the memory file alone.
    let r = post_json(
        &s,
        &path,
        Some(&mine),
        &json!({"target_state": "Standby", "target_hypervisor": "qemu"}),
    );
    r.error(409, "conflict");
    fs::write(&disk, noise(f.disk.len(), 97)).expect("disk");
    fs::write(&mem, b"left alone").expect("mem");
    let r = post_json(
        &s,
        &path,
        Some(&mine),
        &json!({"target_state": "Stopped", "target_hypervisor": "qemu"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["state"], "Stopped");
    assert_eq!(r.json()["hypervisor"], "qemu");
    assert!(fs::read(&disk).expect("disk") == f.disk, "disk restored");
    assert_eq!(fs::read(&mem).expect("mem"), b"left alone");
    let shown = stasis(&f.repo, &["instance", "show", "app"]);
    assert!(shown.contains("hypervisor qemu"), "{shown}");
    // No temporary file is left beside the targets.
    let stray: Vec<_> = fs::read_dir(&f.files)
        .expect("files")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("stasis-restore"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // Bad input, another VM's snapshot, another tenant, a read-only token, a deleted
    // snapshot.
    post_json(&s, &path, Some(&mine), &json!({"target_state": "Paused"})).error(400, "bad_request");
    let web = get(&s, "/snapshots?source_instance_id=web", Some(&mine)).json();
    let other = id_of(&web[0]);
    post_json(
        &s,
        &format!("/instances/app/snapshots/{other}/restore"),
        Some(&mine),
        &json!({}),
    )
    .error(409, "conflict");
    not_found_shape(&post_json(&s, &path, Some(&acme), &json!({})), "app");
    post_json(&s, &path, Some(&ro), &json!({})).error(403, "forbidden");
    let r = req(
        "DELETE",
        &s.url(&format!("/snapshots/{id}")),
        Some(&mine),
        &[],
        None,
    );
    assert_eq!(r.status, 204);
    not_found_shape(&post_json(&s, &path, Some(&mine), &json!({})), &id);
}

/// hypeman's snapshot-schedule routes: set, read, replace and remove, with its
/// validation of interval and retention; another tenant's instance is not there.
/// (Runs are tested with a clock in stasis-repo and in real time by the SDK test.)
#[test]
fn schedules_are_set_read_and_removed_through_the_api() {
    let f = fixture();
    stasis(
        &f.repo,
        &[
            "instance",
            "add",
            "app",
            "--hypervisor",
            "qemu",
            "--disk",
            &format!("root={}", f.files.join("disk.img").display()),
        ],
    );
    let s = f.serve(&[]);
    let mine = token(&f.repo, "default", false);
    let acme = token(&f.repo, "acme", false);
    let ro = token(&f.repo, "default", true);
    let path = "/instances/app/snapshot-schedule";
    get(&s, path, Some(&mine)).error(404, "not_found");
    for bad in [
        json!({"interval": "30s", "retention": {"max_count": 2}}),
        json!({"interval": "an hour", "retention": {"max_count": 2}}),
        json!({"interval": "1h", "retention": {}}),
        json!({"interval": "1h", "retention": {"max_age": "forever"}}),
        json!({"interval": "1h", "retention": {"max_count": 1}, "name_prefix": "x".repeat(48)}),
    ] {
        let r = send_json(&s, "PUT", path, Some(&mine), &bad);
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
    let body = json!({
        "interval": "1h30m",
        "retention": {"max_count": 3, "max_age": "168h"},
        "name_prefix": "nightly",
        "metadata": {"team": "infra"},
    });
    send_json(&s, "PUT", path, Some(&ro), &body).error(403, "forbidden");
    not_found_shape(&send_json(&s, "PUT", path, Some(&acme), &body), "app");
    let r = send_json(&s, "PUT", path, Some(&mine), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let set = r.json();
    assert_eq!(set["interval"], "1h30m");
    assert_eq!(set["retention"]["max_count"], 3);
    assert_eq!(set["name_prefix"], "nightly");
    assert_eq!(set["metadata"]["team"], "infra");
    assert!(set["next_run_at"].as_str().is_some(), "{set}");
    assert!(set["last_run_at"].is_null(), "{set}");
    let got = get(&s, path, Some(&mine));
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), set);
    not_found_shape(&get(&s, path, Some(&acme)), "app");
    // It lives in the catalog: a restarted server has it, due at the same time.
    drop(s);
    let s = f.serve(&[]);
    assert_eq!(get(&s, path, Some(&mine)).json(), set);
    // Replaced, then removed; removing again is a 404.
    let r = send_json(
        &s,
        "PUT",
        path,
        Some(&mine),
        &json!({"interval": "2h", "retention": {"max_count": 1}}),
    );
    assert_eq!(r.json()["interval"], "2h", "{}", r.json());
    let r = req("DELETE", &s.url(path), Some(&mine), &[], None);
    assert_eq!(r.status, 204);
    get(&s, path, Some(&mine)).error(404, "not_found");
    req("DELETE", &s.url(path), Some(&mine), &[], None).error(404, "not_found");
}

/// `GET /snapshots` stays a plain array; with `limit`, full pages name the next in a
/// `Link` header, and following them lists every snapshot once, in the same order.
#[test]
fn snapshot_lists_page_with_an_opaque_cursor() {
    let f = fixture();
    for n in ["b", "c", "d", "e"] {
        stasis(
            &f.repo,
            &[
                "create",
                "web",
                n,
                "--disk",
                &format!("root={}", f.files.join("disk.img").display()),
            ],
        );
    }
    let s = f.serve(&[]);
    let mine = token(&f.repo, "default", false);
    let all: Vec<String> = get(&s, "/snapshots", Some(&mine))
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(all.len(), 5);
    let mut seen = Vec::new();
    let mut next = Some("/snapshots?source_instance_id=web&limit=2".to_string());
    let mut pages = 0;
    while let Some(p) = next.take() {
        pages += 1;
        assert!(pages <= 5, "pages never end");
        let r = get(&s, &p, Some(&mine));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        seen.extend(r.json().as_array().expect("array").iter().map(id_of));
        if let Some(link) = r.header("link") {
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            let url = link
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .map(|(u, _)| u.to_string())
                .expect("a URL in <>");
            assert!(
                url.contains("limit=2") && url.contains("source_instance_id=web"),
                "{url}"
            );
            next = Some(url);
        }
    }
    assert_eq!(seen, all);
    get(&s, "/snapshots?cursor=nope&limit=2", Some(&mine)).error(400, "bad_request");
    // Another tenant's snapshot is no cursor for acme.
    let acme = token(&f.repo, "acme", false);
    get(&s, &format!("/snapshots?cursor={}", all[0]), Some(&acme)).error(400, "bad_request");
}
