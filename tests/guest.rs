//! `stasis ls|cat|cp SNAP[:DISK[/pN]]:/PATH` end to end: images made with
//! `mkfs.ext4 -d` (bare, and in an MBR partition beside another), snapshotted, and
//! everything seen through the commands compared with the source tree: names, kinds,
//! modes, owners, sizes, mtimes, link targets, bytes, holes.

mod common;
use common::{noise, run_stasis, sh, stasis_ok};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn tree(root: &Path) {
    fs::create_dir_all(root.join("etc/ssh")).expect("dirs");
    fs::write(root.join("etc/hostname"), b"guest\n").expect("write");
    fs::write(root.join("etc/ssh/key"), noise(3000, 1)).expect("write");
    fs::set_permissions(root.join("etc/ssh/key"), fs::Permissions::from_mode(0o600))
        .expect("chmod");
    fs::set_permissions(root.join("etc/ssh"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut deep = root.join("deep");
    for i in 0..16 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).expect("deep");
    fs::write(deep.join("leaf"), b"leaf").expect("write");
    fs::write(root.join("ünïcödé ☃"), b"snow").expect("write");
    std::os::unix::fs::symlink("etc/hostname", root.join("rel")).expect("ln");
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).expect("ln");
    fs::hard_link(root.join("etc/hostname"), root.join("hard")).expect("ln");
    let f = fs::File::create(root.join("sparse")).expect("sparse");
    f.set_len(64 << 20).expect("len");
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(50_000, 2), 9 << 20).expect("write");
    fs::write(root.join("big"), noise(5 << 20, 3)).expect("write");
    fs::set_permissions(root.join("big"), fs::Permissions::from_mode(0o4751)).expect("chmod");
    sh(Command::new("touch")
        .args(["-h", "-d", "2020-01-02 03:04:05"])
        .arg(root.join("etc/hostname"))
        .arg(root.join("abs")));
}

fn lstat_tree(root: &Path, rel: &str, out: &mut BTreeMap<String, fs::Metadata>) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .expect("dir")
        .map(|e| e.expect("e").file_name())
        .collect();
    names.sort();
    for n in names {
        let p = if rel.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", n.to_string_lossy())
        };
        let m = fs::symlink_metadata(root.join(&p)).expect("lstat");
        if m.is_dir() {
            lstat_tree(root, &p, out);
        }
        out.insert(p, m);
    }
}

fn json(repo: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&stasis_ok(repo, &a)).expect("json")
}

fn fails(repo: &Path, args: &[&str], needle: &str) {
    let out = run_stasis(repo, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn the_guests_files_are_listed_read_and_copied_out_without_root() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    tree(&src);
    let img = dir.path().join("root.img");
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("160M"));
    let repo = dir.path().join("repo");
    stasis_ok(&repo, &["init"]);
    stasis_ok(
        &repo,
        &[
            "create",
            "vm",
            "s",
            "--disk",
            &format!("root={}", img.display()),
        ],
    );

    // ls: the root's names, and -l's fields as JSON for every entry of the tree.
    let names = stasis_ok(&repo, &["ls", "vm/s:/"]);
    let mut want: Vec<String> = fs::read_dir(&src)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    want.push("lost+found".into());
    want.sort();
    assert_eq!(names.lines().collect::<Vec<_>>(), want);
    let mut source = BTreeMap::new();
    lstat_tree(&src, "", &mut source);
    for (p, m) in &source {
        let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
        let listed = json(&repo, &["ls", &format!("vm/s:root:/{parent}")]);
        let e = listed
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["name"] == *name)
            .unwrap_or_else(|| panic!("{p} not listed: {listed}"));
        assert_eq!(e["mode"], m.mode() & 0o7777, "{p}");
        assert_eq!(
            (e["uid"].as_u64(), e["gid"].as_u64()),
            (Some(u64::from(m.uid())), Some(u64::from(m.gid()))),
            "{p}"
        );
        assert_eq!(e["mtime"].as_i64(), Some(m.mtime()), "{p}");
        if m.is_file() {
            assert_eq!(e["kind"], "file", "{p}");
            assert_eq!(e["size"].as_u64(), Some(m.len()), "{p}");
        } else if m.is_symlink() {
            assert_eq!(e["kind"], "symlink", "{p}");
            assert_eq!(
                e["target"].as_str().map(Path::new),
                Some(fs::read_link(src.join(p)).expect("link").as_path()),
                "{p}"
            );
        } else {
            assert_eq!(e["kind"], "dir", "{p}");
        }
    }
    let long = stasis_ok(&repo, &["ls", "-l", "vm/s:/"]);
    assert!(
        long.lines()
            .any(|l| l.starts_with("-rwsr-x--x ") && l.ends_with(" big")),
        "{long}"
    );
    assert!(
        long.lines()
            .any(|l| l.starts_with("lrwxrwxrwx ") && l.ends_with("abs -> /etc/passwd")),
        "{long}"
    );
    assert!(long.contains("2020-01-02 03:04:05"), "{long}");

    // cat: bytes, including a file bigger than one piece and a sparse one.
    for f in [
        "etc/hostname",
        "big",
        "sparse",
        "ünïcödé ☃",
        "deep/d0/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/d11/d12/d13/d14/d15/leaf",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
            .arg("--repo")
            .arg(&repo)
            .args(["cat", &format!("vm/s:/{f}")])
            .output()
            .expect("cat");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == fs::read(src.join(f)).expect("src"),
            "{f}: bytes"
        );
    }

    // cp: the whole tree, then compared entry by entry with the source.
    let out = dir.path().join("out");
    stasis_ok(&repo, &["cp", "vm/s:/", out.to_str().expect("utf8")]);
    let mut copied = BTreeMap::new();
    lstat_tree(&out, "", &mut copied);
    copied.retain(|p, _| !p.starts_with("lost+found"));
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );
    for (p, m) in &source {
        let c = &copied[p];
        assert_eq!(c.mode(), m.mode(), "{p}: mode and kind");
        assert_eq!(c.mtime(), m.mtime(), "{p}: mtime");
        if m.is_file() {
            assert!(
                fs::read(out.join(p)).expect("copy") == fs::read(src.join(p)).expect("src"),
                "{p}"
            );
        }
        if m.is_symlink() {
            assert_eq!(
                fs::read_link(out.join(p)).expect("l"),
                fs::read_link(src.join(p)).expect("l")
            );
        }
    }
    assert!(
        copied["sparse"].blocks() * 512 < 1 << 20,
        "the sparse file stays sparse"
    );
    // One file into a directory, under its own name; nothing is overwritten.
    let one = dir.path().join("one");
    fs::create_dir(&one).expect("dir");
    stasis_ok(
        &repo,
        &["cp", "vm/s:/etc/hostname", one.to_str().expect("utf8")],
    );
    assert_eq!(fs::read(one.join("hostname")).expect("copy"), b"guest\n");
    fails(
        &repo,
        &["cp", "vm/s:/etc/hostname", one.to_str().expect("utf8")],
        "exists",
    );

    // Errors: a bad spec, a missing path, a file as a directory, a disk that is not
    // there, a snapshot that is not there.
    fails(&repo, &["ls", "vm/s"], "SNAP[:DISK[/pN]]:/PATH");
    fails(&repo, &["ls", "vm/s:/nope"], "/nope");
    fails(&repo, &["cat", "vm/s:/etc"], "not a regular file");
    fails(&repo, &["ls", "vm/s:swap:/"], "no file \"swap\"");
    fails(&repo, &["ls", "vm/t:/"], "t");
}

/// A disk with two filesystems (MBR p1 and logical p5) needs `DISK/pN`; a snapshot with
/// two disks needs DISK; a disk with no filesystem says so.
#[test]
fn partitions_and_disks_are_named_when_there_are_several() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("disk.img");
    fs::File::create(&img)
        .expect("img")
        .set_len(200 << 20)
        .expect("len");
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        b"label: dos\nstart=2048, size=40960, type=83\nstart=43008, size=300000, type=5\nstart=45056, size=200000, type=83\n",
    )
    .expect("script");
    assert!(child.wait().expect("sfdisk").success());
    for (name, start, sectors) in [("boot", 2048u64, 40960u64), ("data", 45056, 200000)] {
        let d = dir.path().join(name);
        fs::create_dir_all(&d).expect("dir");
        fs::write(d.join(format!("{name}.txt")), name).expect("write");
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&d)
            .arg("-E")
            .arg(format!("offset={},nodiscard", start * 512))
            .arg(&img)
            .arg((sectors / 2).to_string()));
    }
    let blank = dir.path().join("blank.img");
    fs::write(&blank, noise(1 << 20, 5)).expect("blank");
    let repo = dir.path().join("repo");
    stasis_ok(&repo, &["init"]);
    stasis_ok(
        &repo,
        &[
            "create",
            "vm",
            "one",
            "--disk",
            &format!("root={}", img.display()),
        ],
    );
    stasis_ok(
        &repo,
        &[
            "create",
            "vm",
            "two",
            "--disk",
            &format!("root={}", img.display()),
            "--disk",
            &format!("blank={}", blank.display()),
        ],
    );
    fails(&repo, &["ls", "vm/one:/"], "2 filesystems (p1, p5)");
    assert_eq!(
        stasis_ok(&repo, &["ls", "vm/one:root/p1:/"])
            .lines()
            .collect::<Vec<_>>(),
        ["boot.txt", "lost+found"]
    );
    assert_eq!(
        stasis_ok(&repo, &["cat", "vm/one:root/p5:/data.txt"]),
        "data"
    );
    fails(&repo, &["ls", "vm/one:root/p2:/"], "partition p2");
    fails(&repo, &["ls", "vm/two:/"], "2 disks (root, blank)");
    fails(&repo, &["ls", "vm/two:blank:/"], "no filesystem");
    assert_eq!(
        stasis_ok(&repo, &["cat", "vm/two:root/p1:/boot.txt"]),
        "boot"
    );
}
