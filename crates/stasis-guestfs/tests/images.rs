//! Real images: trees put into ext4 by `mkfs.ext4 -d` (bare, in an MBR partition made
//! by sfdisk, in a GPT partition made by sgdisk, placed with `-E offset=`), read back
//! and compared with the source tree: every name, kind, mode, owner, size, mtime,
//! symlink target and byte.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use stasis_guestfs::{Entry, Filesystem, Kind, Scheme, Source, join, partitions, volumes};

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tree with what guests have: deep and unicode names, symlinks (relative,
/// absolute, dangling), a hard link, a sparse file, an empty file, a fifo, odd modes,
/// set mtimes.
fn tree(root: &Path) {
    fs::create_dir_all(root.join("etc/ssh")).expect("dirs");
    fs::write(root.join("etc/hostname"), b"guest\n").expect("write");
    fs::write(root.join("etc/ssh/sshd_config"), noise(10_000, 1)).expect("write");
    let mut deep = root.join("deep");
    for i in 0..24 {
        deep = deep.join(format!("level-{i}"));
    }
    fs::create_dir_all(&deep).expect("deep");
    fs::write(deep.join("bottom"), b"found").expect("write");
    fs::write(root.join("café ☕ naïve.txt"), "unicode\n").expect("write");
    std::os::unix::fs::symlink("hostname", root.join("etc/alias")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).expect("symlink");
    fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.hard")).expect("link");
    let sparse = fs::File::create(root.join("sparse.img")).expect("sparse");
    sparse.set_len(48 << 20).expect("size");
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(70_000, 2), 5 << 20).expect("w");
    drop(sparse);
    fs::write(root.join("empty"), b"").expect("empty");
    fs::write(root.join("big.bin"), noise(3 << 20, 3)).expect("big");
    sh(Command::new("mkfifo").arg(root.join("pipe")));
    fs::set_permissions(
        root.join("etc/ssh/sshd_config"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    fs::set_permissions(root.join("big.bin"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    sh(Command::new("touch")
        .args(["-h", "-d", "2021-03-04 05:06:07.123456789"])
        .arg(root.join("etc/hostname"))
        .arg(root.join("abs-link")));
}

fn mkfs(img: &Path, src: &Path, offset: u64, size_kib: u64) {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-b", "4096", "-I", "256", "-d"])
        .arg(src);
    // nodiscard: mke2fs would punch holes past its own end, through the partitions
    // that follow.
    cmd.arg("-E").arg(format!("offset={offset},nodiscard"));
    sh(cmd.arg(img).arg(size_kib.to_string()));
}

/// Every path of the source tree (relative, `/`-rooted) with what lstat says.
fn walk_source(root: &Path, rel: &str, out: &mut BTreeMap<String, fs::Metadata>) {
    for e in fs::read_dir(root.join(rel.trim_start_matches('/'))).expect("read_dir") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf8 name");
        let p = format!("{}/{name}", rel.trim_end_matches('/'));
        let m = fs::symlink_metadata(e.path()).expect("lstat");
        if m.is_dir() {
            walk_source(root, &p, out);
        }
        out.insert(p, m);
    }
}

fn walk_image(fs: &Filesystem, dir: &[u8], out: &mut BTreeMap<String, Entry>) {
    for e in fs.list(dir).expect("list") {
        let p = join(dir, &e.name);
        if e.kind == Kind::Dir {
            walk_image(fs, &p, out);
        }
        out.insert(String::from_utf8(p).expect("utf8"), e);
    }
}

fn compare(fs: &Filesystem, src: &Path) {
    let mut want = BTreeMap::new();
    walk_source(src, "/", &mut want);
    let mut got = BTreeMap::new();
    walk_image(fs, b"/", &mut got);
    got.remove("/lost+found");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same names"
    );
    for (p, m) in &want {
        let e = &got[p];
        let kind = match m.file_type() {
            t if t.is_dir() => Kind::Dir,
            t if t.is_symlink() => Kind::Symlink,
            t if t.is_file() => Kind::File,
            _ => Kind::Fifo,
        };
        assert_eq!(e.kind, kind, "{p}");
        assert_eq!(u32::from(e.mode), m.mode() & 0o7777, "{p}: mode");
        assert_eq!((e.uid, e.gid), (m.uid(), m.gid()), "{p}: owner");
        assert_eq!(e.mtime, m.mtime(), "{p}: mtime");
        // mke2fs 1.47's -d stores whole seconds only.
        assert_eq!(e.mtime_nsec, 0, "{p}: mtime ns");
        if kind == Kind::File || kind == Kind::Symlink {
            assert_eq!(e.size, m.len(), "{p}: size");
        }
        let full = src.join(p.trim_start_matches('/'));
        match kind {
            Kind::Symlink => assert_eq!(
                e.target.as_deref(),
                Some(
                    fs::read_link(&full)
                        .expect("readlink")
                        .as_os_str()
                        .as_encoded_bytes()
                ),
                "{p}: target"
            ),
            Kind::File => {
                let mut bytes = Vec::new();
                let n = fs
                    .read_file(p.as_bytes(), &mut |b| {
                        bytes.extend_from_slice(b);
                        Ok(())
                    })
                    .expect("read");
                assert_eq!(n, m.len());
                assert!(bytes == fs::read(&full).expect("read source"), "{p}: bytes");
            }
            _ => {}
        }
    }
    // What is not a regular file has no bytes to read; what is not there is NotFound.
    let e = fs.read_file(b"/pipe", &mut |_| Ok(())).expect_err("a fifo");
    assert_eq!(e.kind(), stasis_guestfs::ErrorKind::NotAFile);
    let e = fs.stat(b"/no/such").expect_err("missing");
    assert_eq!(e.kind(), stasis_guestfs::ErrorKind::NotFound);
    let e = fs.list(b"/etc/hostname").expect_err("not a dir");
    assert_eq!(e.kind(), stasis_guestfs::ErrorKind::NotADirectory);
}

#[test]
fn a_bare_ext4_image_reads_back_as_its_source_tree() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    tree(&src);
    let img = dir.path().join("bare.img");
    mkfs(&img, &src, 0, 128 << 10);
    let disk: Arc<dyn Source> = Arc::new(fs::File::open(&img).expect("img"));
    assert!(partitions(disk.as_ref()).expect("table").is_empty());
    let vols = volumes(disk).expect("volumes");
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].name, "");
    compare(&vols[0].fs, &src);
}

#[test]
fn partitioned_images_read_back_per_partition() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    tree(&src);
    // MBR: p1 (a second ext4, small), p2 an extended partition holding logical p5.
    let mbr = dir.path().join("mbr.img");
    fs::File::create(&mbr)
        .expect("img")
        .set_len(300 << 20)
        .expect("size");
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", "--no-reread", "--no-tell-kernel"]).arg(&mbr);
    sf.stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        b"label: dos\nstart=2048, size=40960, type=83\nstart=43008, size=500000, type=5\nstart=45056, size=270336, type=83\n",
    )
    .expect("script");
    assert!(child.wait().expect("sfdisk").success());
    let other = dir.path().join("other");
    fs::create_dir_all(&other).expect("dir");
    fs::write(other.join("only-here"), b"p1").expect("write");
    mkfs(&mbr, &other, 2048 * 512, 40960 / 2);
    mkfs(&mbr, &src, 45056 * 512, 270336 / 2);
    let disk: Arc<dyn Source> = Arc::new(fs::File::open(&mbr).expect("img"));
    let parts = partitions(disk.as_ref()).expect("table");
    let numbers: Vec<(u32, Scheme, &str)> = parts
        .iter()
        .map(|p| (p.number, p.scheme, p.kind.as_str()))
        .collect();
    assert_eq!(
        numbers,
        [(1, Scheme::Mbr, "0x83"), (5, Scheme::Mbr, "0x83")]
    );
    assert_eq!((parts[1].start, parts[1].len), (45056 * 512, 270336 * 512));
    let vols = volumes(disk).expect("volumes");
    let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["p1", "p5"]);
    assert_eq!(vols[0].fs.list(b"/").expect("p1")[1].name, b"only-here");
    compare(&vols[1].fs, &src);

    // GPT: p1 holds no filesystem, p2 the tree.
    let gpt = dir.path().join("gpt.img");
    fs::File::create(&gpt)
        .expect("img")
        .set_len(200 << 20)
        .expect("size");
    sh(Command::new("sgdisk")
        .args([
            "-o",
            "-n",
            "1:2048:+8M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:+160M",
            "-t",
            "2:8300",
        ])
        .arg(&gpt));
    let disk: Arc<dyn Source> = Arc::new(fs::File::open(&gpt).expect("img"));
    let parts = partitions(disk.as_ref()).expect("table");
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.scheme == Scheme::Gpt));
    mkfs(&gpt, &src, parts[1].start, parts[1].len / 1024);
    let vols = volumes(disk).expect("volumes");
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].name, "p2");
    compare(&vols[0].fs, &src);
}

/// Bytes that are no filesystem have no tree; a superblock that lies is an error.
#[test]
fn no_filesystem_is_no_tree_and_damage_is_an_error() {
    let zeros: Arc<dyn Source> = Arc::new(vec![0u8; 1 << 20]);
    assert!(volumes(zeros).expect("nothing").is_empty());
    let noise: Arc<dyn Source> = Arc::new(noise(1 << 20, 9));
    assert!(volumes(noise).expect("nothing").is_empty());
    let mut fake = vec![0u8; 1 << 20];
    fake[1024 + 56] = 0x53;
    fake[1024 + 57] = 0xEF;
    let fake: Arc<dyn Source> = Arc::new(fake);
    assert!(volumes(fake).is_err());
}

/// Walk everything of every volume, bounded; what the fuzz target does.
fn walk_all(disk: Arc<dyn Source>) {
    let Ok(vols) = volumes(disk) else { return };
    for v in vols {
        let mut stack = vec![b"/".to_vec()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = v.fs.list(&dir) else {
                continue;
            };
            for e in entries {
                seen += 1;
                if seen > 2000 {
                    return;
                }
                let p = join(&dir, &e.name);
                let _ = v.fs.stat(&p);
                match e.kind {
                    Kind::Dir if stack.len() < 64 => stack.push(p),
                    Kind::File if e.size < 16 << 20 => {
                        let _ = v.fs.read_file(&p, &mut |_| Ok(()));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Damaged images, deterministically: bytes of the metadata of a small ext4 and of a
/// GPT disk overwritten at random, thousands of times. Each gives a tree or an error,
/// never a panic (the fuzz target `guestfs` does the same, guided, for longer).
#[test]
fn damaged_images_give_errors_never_panics() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("a/b")).expect("dirs");
    fs::write(src.join("a/b/f"), noise(5000, 4)).expect("write");
    fs::write(src.join("small"), b"x").expect("write");
    std::os::unix::fs::symlink("a/b/f", src.join("l")).expect("symlink");
    let img = dir.path().join("seed.img");
    fs::File::create(&img)
        .expect("img")
        .set_len(256 << 10)
        .expect("size");
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-d"])
        .arg(&src)
        .arg(&img));
    let ext = fs::read(&img).expect("seed");
    let gpt = dir.path().join("gpt.img");
    fs::File::create(&gpt)
        .expect("img")
        .set_len(2 << 20)
        .expect("size");
    sh(Command::new("sgdisk")
        .args(["-o", "-a", "1", "-n", "1:34:+64K", "-n", "2:300:+512K"])
        .arg(&gpt));
    let mut gpt = fs::read(&gpt).expect("gpt");
    gpt[512 * 300..512 * 300 + ext.len()].copy_from_slice(&ext);
    // Undamaged, both seeds hold the tree.
    for seed in [&ext, &gpt] {
        let vols = volumes(Arc::new(seed.clone())).expect("seed");
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].fs.list(b"/a/b").expect("list").len(), 1);
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (seed, hot) in [(&ext, 8192usize), (&gpt, 512 * 40)] {
        for _ in 0..1500 {
            let mut d = seed.clone();
            for _ in 0..=(next() % 8) {
                let at = (next() as usize) % hot;
                d[at] = next() as u8;
            }
            walk_all(Arc::new(d));
        }
    }
}
