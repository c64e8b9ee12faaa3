//! Concurrent use of one repository by separate processes: two `create`s, a `delete`
//! followed by `gc`, and a reader through a FUSE mount, all at once. gc must not remove
//! a block that a create deduplicated against, and the mounted reader must keep
//! reading right bytes while gc repacks under it and new snapshots appear.

mod common;
#[path = "common/mount.rs"]
mod mount;
use common::stasis_ok as ok;
use mount::Mount;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use mount::BIN;

fn drop_caches() {
    // Root only (CI); elsewhere the reads still go through the mount, just cached.
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

#[test]
fn creates_gc_delete_and_a_mounted_reader_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let base = common::make_ext4(d, "base.img", "32M");
    let mut imgs = Vec::new();
    for (i, seed) in [(0, 5u64), (1, 6), (2, 7)] {
        let p = d.join(format!("img{i}.img"));
        fs::copy(&base, &p).expect("copy");
        common::modify_ext4(d, &p, seed);
        imgs.push(p);
    }
    let repo = d.join("repo");
    fs::create_dir(&repo).expect("mkdir");
    ok(
        &repo,
        &["init", "--pack-size", "1MiB", "--block-size", "16KiB"],
    );
    let disk = |p: &Path| format!("root={}", p.display());
    ok(&repo, &["create", "vm", "base", "--disk", &disk(&base)]);
    ok(&repo, &["create", "vm", "keep", "--disk", &disk(&imgs[0])]);
    let mount_point = d.join("mnt");
    let mount = Mount::start(&repo, &mount_point);

    for round in 0..3 {
        // The base goes; its blocks are garbage that both creates deduplicate against.
        // Each create starts a VM of its own: a create branches from its VM's current
        // snapshot, and the delete below may remove that one while the create runs,
        // which the create refuses (rightly, but on timing).
        let a = format!("a{round}");
        let b = format!("b{round}");
        let mut creates: Vec<Child> = [(&a, &base), (&b, &imgs[1 + round % 2])]
            .iter()
            .map(|(name, img)| {
                Command::new(BIN)
                    .arg("--repo")
                    .arg(&repo)
                    .args(["create", name, "snap", "--disk", &disk(img)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn create")
            })
            .collect();
        let spec = if round == 0 {
            "vm/base".to_string()
        } else {
            format!("a{}/snap", round - 1)
        };
        ok(&repo, &["delete", &spec]);
        let gc = Command::new(BIN)
            .arg("--repo")
            .arg(&repo)
            .args(["gc", "--repack-below", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gc");
        // Meanwhile, read a committed snapshot through the mount, cold.
        drop_caches();
        let got = fs::read(mount_point.join("vms/vm/keep/root")).expect("read through mount");
        assert!(
            got == fs::read(&imgs[0]).expect("src"),
            "round {round}: mount read"
        );
        for c in creates.iter_mut().chain(std::iter::once(&mut { gc })) {
            let st = c.wait().expect("wait");
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(st.success(), "round {round}: {err}");
        }
        // The new snapshots read right through the mount (their blocks were written
        // after it started) and restore byte-identical.
        drop_caches();
        for (name, img) in [(&a, &base), (&b, &imgs[1 + round % 2])] {
            let through = fs::read(mount_point.join(format!("vms/{name}/snap/root")))
                .expect("read new snapshot");
            assert!(
                through == fs::read(img).expect("src"),
                "round {round}: {name} via mount"
            );
            let out = d.join("out");
            let _ = fs::remove_dir_all(&out);
            ok(
                &repo,
                &[
                    "restore",
                    &format!("{name}/snap"),
                    out.to_str().expect("utf8"),
                ],
            );
            assert!(
                fs::read(out.join("root")).expect("restored") == fs::read(img).expect("src"),
                "round {round}: {name} restore"
            );
        }
        let v: Value =
            serde_json::from_str(&ok(&repo, &["--json", "verify", "--read-data"])).expect("json");
        assert!(v["problems"].as_array().is_some_and(Vec::is_empty), "{v}");
    }
    // A final gc with nothing running leaves no garbage.
    ok(&repo, &["gc"]);
    let v: Value =
        serde_json::from_str(&ok(&repo, &["--json", "verify", "--read-data"])).expect("json");
    assert!(
        v["unindexed_packs"].as_array().is_some_and(Vec::is_empty),
        "{v}"
    );
    drop_caches();
    let got = fs::read(mount_point.join("vms/vm/keep/root")).expect("read after gc");
    assert!(got == fs::read(&imgs[0]).expect("src"));
    drop(mount);
}

/// A damaged block read through the mount is an I/O error (EIO), never wrong bytes;
/// the undamaged parts of the file still read right.
#[test]
fn damaged_blocks_read_as_eio_through_the_mount() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let repo = d.join("repo");
    fs::create_dir(&repo).expect("mkdir");
    ok(&repo, &["init", "--compression", "none"]);
    let img = d.join("disk.img");
    let data = common::noise(4 << 20, 77);
    fs::write(&img, &data).expect("write");
    ok(
        &repo,
        &[
            "create",
            "vm",
            "a",
            "--disk",
            &format!("root={}", img.display()),
        ],
    );
    // Flip one byte inside the first stored block of the data pack, in place.
    let mut packs: Vec<PathBuf> = Vec::new();
    for e in walkdir(&repo.join("store/packs")) {
        packs.push(e);
    }
    let pack = packs
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 32 + 1000).expect("read");
    b[0] ^= 0x10;
    f.write_all_at(&b, 32 + 1000).expect("write");
    drop(f);
    let mount_point = d.join("mnt");
    let mount = Mount::start(&repo, &mount_point);
    drop_caches();
    let file = fs::File::open(mount_point.join("vms/vm/a/root")).expect("open");
    let mut buf = vec![0u8; 64 << 10];
    let damaged: Vec<bool> = (0..data.len() / buf.len())
        .map(|i| {
            let off = (i * buf.len()) as u64;
            match file.read_exact_at(&mut buf, off) {
                Ok(()) => {
                    assert!(
                        buf[..] == data[off as usize..off as usize + buf.len()],
                        "wrong bytes at {off}"
                    );
                    false
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                    true
                }
            }
        })
        .collect();
    assert_eq!(
        damaged.iter().filter(|x| **x).count(),
        1,
        "exactly the damaged block fails"
    );
    drop(file);
    drop(mount);
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("ls").flatten() {
        if e.path().is_dir() {
            out.extend(walkdir(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
