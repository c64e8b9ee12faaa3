//! FUSE tests that really mount: `stasis mount` runs as a child process (as root with
//! /dev/fuse, as in CI) and the tests read through the kernel.

mod common;
#[path = "common/mount.rs"]
mod mount;
use common::noise;
use mount::{BIN, Mount, stasis};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

/// A sparse disk with data, zero runs and holes.
fn sparse_disk(path: &Path, seed: u64) -> Vec<u8> {
    let size = 24 << 20;
    let f = File::create(path).expect("create");
    f.set_len(size as u64).expect("len");
    let mut want = vec![0u8; size];
    for (k, off) in [0usize, 1 << 20, (5 << 20) + 12345, 16 << 20]
        .into_iter()
        .enumerate()
    {
        let d = noise(300_000, seed + k as u64);
        f.write_all_at(&d, off as u64).expect("write");
        want[off..off + d.len()].copy_from_slice(&d);
    }
    f.write_all_at(&vec![0u8; 200_000], 9 << 20).expect("zeros");
    want
}

#[test]
fn the_mount_shows_every_snapshot_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("repo");
    stasis(&repo, &["init"]);
    let disk = dir.path().join("disk.img");
    let want = sparse_disk(&disk, 1);
    let mem = dir.path().join("mem");
    let mem_bytes = noise(3 << 20, 9);
    fs::write(&mem, &mem_bytes).expect("mem");
    let vmstate = dir.path().join("vmstate");
    fs::write(&vmstate, noise(5000, 3)).expect("vmstate");
    let base_id = stasis(
        &repo,
        &[
            "create",
            "fc",
            "base",
            "--disk",
            &format!("rootfs.ext4={}", disk.display()),
            "--memory",
            mem.to_str().expect("utf8"),
            "--state",
            vmstate.to_str().expect("utf8"),
        ],
    )
    .lines()
    .next()
    .expect("id")
    .to_string();
    // A child given as a diff layer: one changed page range over the base.
    let layer = dir.path().join("layer");
    let lf = File::create(&layer).expect("layer");
    lf.set_len(want.len() as u64).expect("len");
    let patch = noise(8192, 77);
    lf.write_all_at(&patch, 2 << 20).expect("write");
    let mut child = want.clone();
    child[2 << 20..(2 << 20) + 8192].copy_from_slice(&patch);
    stasis(
        &repo,
        &[
            "create",
            "fc",
            "next",
            "--parent",
            "fc/base",
            "--diff",
            "--disk",
            &format!("rootfs.ext4={}", layer.display()),
        ],
    );

    let point = dir.path().join("mnt");
    let m = Mount::start(&repo, &point);
    let snap = point.join("vms/fc/base");
    let mut names: Vec<String> = fs::read_dir(&snap)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["mem", "rootfs.ext4", "snapshot.json", "vmstate"]);
    assert_eq!(
        fs::read_link(point.join("vms/fc/current"))
            .expect("current")
            .to_str(),
        Some("next")
    );
    assert_eq!(
        fs::read_link(point.join("vms/fc/next/parent"))
            .expect("parent")
            .to_string_lossy(),
        format!("../../../snapshots/{base_id}")
    );
    assert!(
        point.join("vms/fc/next/parent/rootfs.ext4").exists(),
        "the parent link resolves"
    );
    assert!(point.join(format!("snapshots/{base_id}/mem")).exists());

    // Whole files, and the diff child merged over its parent.
    assert!(fs::read(snap.join("rootfs.ext4")).expect("read") == want);
    assert!(fs::read(snap.join("mem")).expect("read") == mem_bytes);
    assert!(fs::read(point.join("vms/fc/next/rootfs.ext4")).expect("read") == child);
    let md = fs::metadata(snap.join("rootfs.ext4")).expect("stat");
    assert_eq!(md.len(), want.len() as u64);
    assert_eq!(md.mode() & 0o777, 0o444);
    assert!(
        md.blocks() * 512 < want.len() as u64 / 4,
        "st_blocks counts stored data, not the apparent size"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(snap.join("snapshot.json")).expect("json"))
            .expect("parse");
    assert_eq!(json["id"], base_id.as_str());

    // Random reads at every kind of offset and length, from several threads at once.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (snap, want) = (&snap, &want);
            s.spawn(move || {
                let f = File::open(snap.join("rootfs.ext4")).expect("open");
                let mut x = 0x9e37_79b9u64 ^ t;
                for _ in 0..300 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let off = (x >> 20) as usize % want.len();
                    let len = ((x >> 8) as usize % 200_000).min(want.len() - off);
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off as u64).expect("pread");
                    assert!(buf == want[off..off + len], "bytes differ at {off}+{len}");
                }
            });
        }
    });

    // Holes: SEEK_DATA/SEEK_HOLE report them (zero blocks count as holes).
    let f = File::open(snap.join("rootfs.ext4")).expect("open");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: lseek on an open descriptor.
    let (data, hole) = unsafe {
        (
            libc::lseek(fd, 400_000, libc::SEEK_DATA),
            libc::lseek(fd, 0, libc::SEEK_HOLE),
        )
    };
    assert_eq!(
        data,
        1 << 20,
        "the next data after the first run is at 1 MiB"
    );
    assert!(
        hole > 0 && hole < (1 << 20),
        "a hole follows the first run, at {hole}"
    );

    // mmap MAP_PRIVATE, as Firecracker maps guest memory.
    let mf = File::open(snap.join("mem")).expect("open");
    // SAFETY: the mapped file is immutable (the mount refuses writes).
    let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&mf) }.expect("mmap");
    assert!(map[..] == mem_bytes[..]);

    // QEMU opens memory files O_RDWR: the open works, a write does not.
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(snap.join("mem"))
        .expect("O_RDWR open");
    let err = rw.write_at(b"x", 0).expect_err("write refused");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TRUNC)
            .open(snap.join("mem"))
            .is_err()
    );
    assert!(fs::remove_file(snap.join("mem")).is_err());
    assert!(
        fs::read(snap.join("mem")).expect("read") == mem_bytes,
        "nothing changed"
    );

    // New snapshots appear and deleted ones disappear without a remount.
    stasis(
        &repo,
        &[
            "create",
            "fc",
            "later",
            "--disk",
            &format!("rootfs.ext4={}", disk.display()),
        ],
    );
    assert!(point.join("vms/fc/later/rootfs.ext4").exists());
    stasis(&repo, &["delete", "fc/later"]);
    let listed: Vec<String> = fs::read_dir(point.join("vms/fc"))
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!listed.contains(&"later".to_string()), "{listed:?}");

    drop((f, mf, rw, map));
    m.stop();
    assert!(!point.join("vms").exists(), "unmounted");
}

#[test]
fn mount_refuses_bad_mountpoints() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("repo");
    stasis(&repo, &["init"]);
    for (point, needle) in [
        (dir.path().join("missing"), "mountpoint"),
        (repo.join("store/config"), "not a directory"),
    ] {
        let out = Command::new(BIN)
            .arg("--repo")
            .arg(&repo)
            .arg("mount")
            .arg(&point)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
    let mount_fails = |point: &Path, needle: &str| {
        let out = Command::new(BIN)
            .arg("--repo")
            .arg(&repo)
            .arg("mount")
            .arg(point)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{needle}: {err}"
        );
    };
    // A directory with something in it.
    let full = dir.path().join("full");
    fs::create_dir(&full).expect("mkdir");
    fs::write(full.join("x"), b"x").expect("write");
    mount_fails(&full, "not empty");

    // Busy: a mount is running there.
    let point = dir.path().join("mnt");
    let m = Mount::start(&repo, &point);
    mount_fails(&point, "busy");
    // SIGTERM unmounts cleanly: exit 0 and the directory is plain again.
    let st = m.signal(libc::SIGTERM);
    assert!(st.success(), "{st}");
    assert!(!point.join("vms").exists());
    let m = Mount::start(&repo, &point);
    let st = m.signal(libc::SIGINT);
    assert!(st.success(), "{st}");

    // Stale: the mount process died without unmounting.
    let m = Mount::start(&repo, &point);
    let st = m.signal(libc::SIGKILL);
    assert!(!st.success());
    mount_fails(&point, "stale");
    stasis(&repo, &["umount", point.to_str().expect("utf8")]);
    Mount::start(&repo, &point).stop();
}

fn fails(repo: &Path, args: &[&str], needle: &str) {
    let out = Command::new(BIN)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(needle),
        "stasis {args:?}: {err}"
    );
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) is installed by .ci/run");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fork_boots_from_the_mount_or_copies() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("repo");
    stasis(&repo, &["init"]);
    let disk = dir.path().join("rootfs.ext4");
    let want = sparse_disk(&disk, 5);
    let mem = dir.path().join("mem");
    let mem_bytes = noise(1 << 20, 6);
    fs::write(&mem, &mem_bytes).expect("mem");
    let id = stasis(
        &repo,
        &[
            "create",
            "web",
            "base",
            "--disk",
            disk.to_str().expect("utf8"),
            "--memory",
            mem.to_str().expect("utf8"),
        ],
    )
    .lines()
    .next()
    .expect("id")
    .to_string();
    let clone_dir = dir.path().join("clone");
    fails(
        &repo,
        &[
            "fork",
            "web/base",
            "clone",
            clone_dir.to_str().expect("utf8"),
        ],
        "no running `stasis mount`",
    );
    assert!(!clone_dir.exists(), "nothing written without a mount");

    let point = dir.path().join("mnt");
    let m = Mount::start(&repo, &point);
    let out: serde_json::Value = serde_json::from_str(&stasis(
        &repo,
        &[
            "--json",
            "fork",
            "web/base",
            "clone",
            clone_dir.to_str().expect("utf8"),
        ],
    ))
    .expect("json");
    assert_eq!(out["vm"]["forked_from"], id.as_str());
    let overlay = clone_dir.join("rootfs.ext4.qcow2");
    let info = qemu_img(&["info", "--output=json", overlay.to_str().expect("utf8")]);
    assert!(
        info.contains(&format!("snapshots/{id}/rootfs.ext4")),
        "{info}"
    );
    qemu_img(&["check", overlay.to_str().expect("utf8")]);
    let raw = dir.path().join("converted.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        overlay.to_str().expect("utf8"),
        raw.to_str().expect("utf8"),
    ]);
    assert!(
        fs::read(&raw).expect("read") == want,
        "the overlay shows the snapshot's disk"
    );
    assert!(
        fs::read(clone_dir.join("mem")).expect("read") == mem_bytes,
        "memory is referenced in the mount"
    );
    // qemu-img reads files in the mount directly too.
    let info = qemu_img(&[
        "info",
        "--output=json",
        point
            .join(format!("snapshots/{id}/rootfs.ext4"))
            .to_str()
            .expect("utf8"),
    ]);
    assert!(info.contains("\"format\": \"raw\""), "{info}");
    fails(
        &repo,
        &[
            "fork",
            "web/base",
            "clone",
            dir.path().join("again").to_str().expect("utf8"),
        ],
        "already exists",
    );
    // The forked VM may branch from the snapshot it came from; the snapshot's timeline says so.
    stasis(
        &repo,
        &[
            "create",
            "clone",
            "first",
            "--parent",
            &id,
            "--disk",
            raw.to_str().expect("utf8"),
        ],
    );
    let log = stasis(&repo, &["log", "web/base"]);
    assert!(log.contains("forked"), "{log}");

    // The guest writes through its overlay (data and a zeroed range); committing the
    // overlay back stores the disk it shows, reading only the clusters it allocated.
    let ov = overlay.to_str().expect("utf8");
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1048576 65536",
            "-c",
            "write -z 16777216 131072",
            ov,
        ])
        .output()
        .expect("qemu-io (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guest_view = dir.path().join("guest.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        ov,
        guest_view.to_str().expect("utf8"),
    ]);
    let next: serde_json::Value = serde_json::from_str(&stasis(
        &repo,
        &[
            "--json", "create", "clone", "next", "--parent", &id, "--disk", ov,
        ],
    ))
    .expect("json");
    assert_eq!(
        next["payloads"][0]["name"], "rootfs.ext4",
        "a fork's overlay commits back under the disk's name"
    );
    assert!(
        next["added_bytes"].as_u64().expect("u64") < 512 * 1024,
        "only the changed clusters are stored: {next}"
    );
    assert_eq!(
        next["ingest"][0]["read"],
        65536 + 131072,
        "only the overlay's own clusters are read: {next}"
    );
    let back = dir.path().join("back");
    stasis(
        &repo,
        &["restore", "clone/next", back.to_str().expect("utf8")],
    );
    assert!(
        fs::read(back.join("rootfs.ext4")).expect("read") == fs::read(&guest_view).expect("read")
    );
    // --format raw stores the qcow2 file itself.
    stasis(
        &repo,
        &[
            "create",
            "clone",
            "file",
            "--format",
            "raw",
            "--disk",
            &format!("img={ov}"),
        ],
    );
    let fback = dir.path().join("fback");
    stasis(
        &repo,
        &["restore", "clone/file", fback.to_str().expect("utf8")],
    );
    assert!(fs::read(fback.join("img")).expect("read") == fs::read(&overlay).expect("read"));
    m.stop();

    // A qcow2 that is not a fork's overlay is converted whole.
    let standalone = dir.path().join("alone.qcow2");
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        disk.to_str().expect("utf8"),
        standalone.to_str().expect("utf8"),
    ]);
    stasis(
        &repo,
        &[
            "create",
            "other",
            "q",
            "--disk",
            standalone.to_str().expect("utf8"),
        ],
    );
    let qback = dir.path().join("qback");
    stasis(
        &repo,
        &["restore", "other/q", qback.to_str().expect("utf8")],
    );
    assert!(fs::read(qback.join("alone")).expect("read") == want);

    // --copy needs no mount: sparse byte-identical files.
    let copy_dir = dir.path().join("copy");
    stasis(
        &repo,
        &[
            "fork",
            "--copy",
            "web/base",
            "clone2",
            copy_dir.to_str().expect("utf8"),
        ],
    );
    assert!(fs::read(copy_dir.join("rootfs.ext4")).expect("read") == want);
    assert!(fs::read(copy_dir.join("mem")).expect("read") == mem_bytes);
    assert!(
        fs::metadata(copy_dir.join("rootfs.ext4"))
            .expect("stat")
            .blocks()
            * 512
            < want.len() as u64 / 2,
        "sparse"
    );
}
