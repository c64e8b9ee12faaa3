//! Shared frames end to end: neighbouring new blocks share one zstd frame, read back
//! exactly, fail loudly when the frame is damaged, and survive gc when only some of
//! their members are still live.

mod common;

use std::path::Path;

use stasis_store::{
    BlobKind, Codec, ErrorKind, FullOptions, GcOptions, Manifest, Store, StoreConfig,
    collect_garbage as collect,
};

const BLOCK: u32 = 4096;

type Roots = Vec<(String, Manifest)>;

/// Compressible text-like bytes that differ from block to block.
fn text(n: usize, seed: u64) -> Vec<u8> {
    let words: [&[u8]; 6] = [
        b"kernel ",
        b"page ",
        b"inode ",
        b"vmstate ",
        b"guest ",
        b"0x7f3a ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 6) as usize]);
        if x.is_multiple_of(11) {
            out.extend_from_slice(format!("{x:x}\n").as_bytes());
        }
    }
    out.truncate(n);
    out
}

fn store_at(dir: &Path, frame_size: u32) -> Store {
    let mut cfg = StoreConfig {
        fanout: 4,
        pack_size: 1 << 20,
        frame_size,
        ..StoreConfig::default()
    };
    cfg.block_sizes.disk = BLOCK;
    common::init_at(dir, cfg)
}

fn put(store: &Store, dir: &Path, name: &str, bytes: &[u8]) -> Manifest {
    let opts = FullOptions {
        parent: None,
        similar: false,
    };
    common::ingest_file(store, &dir.join(name), bytes, BLOCK, opts).0
}

/// Stored bytes of data blobs, counting each stored range once.
fn stored_data_bytes(store: &Store) -> u64 {
    let idx = store.index();
    idx.iter()
        .filter(|(_, l)| l.kind == BlobKind::Data)
        .map(|(_, l)| idx.stored_share(l))
        .sum()
}

#[test]
fn neighbouring_blocks_share_frames_and_read_back_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let want = text(300 << 10, 7);
    let mut sizes = Vec::new();
    for frame_size in [256 << 10, 0] {
        let repo = dir.path().join(format!("repo-{frame_size}"));
        std::fs::create_dir(&repo).expect("mkdir");
        let store = store_at(&repo, frame_size);
        let m = put(&store, dir.path(), "in", &want);
        let got = common::read_back(&store, &m, &dir.path().join("out")).expect("restore");
        assert!(got == want, "restore differs with frame size {frame_size}");
        let framed = store
            .index()
            .iter()
            .filter(|(_, l)| l.codec == Codec::ZstdFrame)
            .count();
        if frame_size == 0 {
            assert_eq!(framed, 0, "frames written with frame size 0");
        } else {
            // 75 blocks in frames of up to 64 blocks: every block is in a frame.
            assert_eq!(framed, 75);
            let fresh = common::reopen(&repo);
            for id in common::data_ids(&fresh, &m) {
                let (_, loc) = fresh.locate(&id).expect("indexed");
                assert_eq!(loc.skip % 4096, 0);
                assert_eq!(stasis_store::Id::of(&fresh.block(&id).expect("block")), id);
            }
            let report = stasis_store::verify_store(&fresh, true, &|_| {}).expect("verify");
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        }
        sizes.push(stored_data_bytes(&store));
    }
    assert!(
        sizes[0] < sizes[1],
        "frames stored {} bytes, single blocks {}",
        sizes[0],
        sizes[1]
    );
}

#[test]
fn a_damaged_frame_is_an_error_never_wrong_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    let want = text(128 << 10, 3);
    let m = {
        let store = store_at(&repo, 256 << 10);
        put(&store, dir.path(), "in", &want)
    };
    let store = common::reopen(&repo);
    let ids = common::data_ids(&store, &m);
    let (pack, loc) = store.locate(&ids[5]).expect("indexed");
    assert_eq!(loc.codec, Codec::ZstdFrame);
    // Flip a byte in the middle of the frame's stored bytes.
    let hex = pack.to_hex();
    let path = repo.join(format!("packs/{}/{hex}.pack", &hex[..2]));
    let mut bytes = std::fs::read(&path).expect("pack");
    bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x20;
    std::fs::write(&path, &bytes).expect("damage");

    let store = common::reopen(&repo);
    let mut errors = 0;
    for (k, id) in ids.iter().enumerate() {
        match store.block(id) {
            Ok(b) => assert_eq!(&b[..], &want[k * 4096..(k + 1) * 4096], "block {k}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "a damaged frame read without an error");
    let r = common::read_back(&store, &m, &dir.path().join("out"));
    assert!(r.is_err(), "restore of a damaged frame succeeded");
    let report = stasis_store::verify_store(&store, true, &|_| {}).expect("verify");
    assert!(!report.problems.is_empty(), "verify missed a damaged frame");
}

#[test]
fn gc_keeps_the_live_members_of_a_frame() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    let store = store_at(&repo, 256 << 10);
    // 16 new blocks: one frame. The second payload reuses its first 8 blocks.
    let a = text(64 << 10, 11);
    let b = a[..32 << 10].to_vec();
    let ma = put(&store, dir.path(), "a", &a);
    let mb = put(&store, dir.path(), "b", &b);
    let dead: Vec<_> = common::data_ids(&store, &ma)[8..].to_vec();
    let roots: Roots = vec![("b".to_string(), mb)];
    for round in 0..2 {
        let mut r = || Ok(roots.clone());
        let opts = GcOptions {
            dry_run: false,
            repack_below: 0.9,
        };
        collect(&store, &opts, &mut r, &|_| {}).expect("gc");
        let fresh = common::reopen(&repo);
        for id in &dead {
            assert!(
                fresh.locate(id).is_none(),
                "round {round}: a dead member is still indexed"
            );
        }
        let live = common::data_ids(&fresh, &mb);
        assert_eq!(live.len(), 8);
        for id in &live {
            let (_, loc) = fresh.locate(id).expect("live member indexed");
            assert_eq!(
                loc.codec,
                Codec::ZstdFrame,
                "round {round}: the frame was re-encoded"
            );
        }
        let got = common::read_back(&fresh, &mb, &dir.path().join("out")).expect("restore");
        assert!(got == b, "round {round}: restore after gc differs");
        let report = stasis_store::verify_store(&fresh, true, &|_| {}).expect("verify");
        assert!(
            report.problems.is_empty(),
            "round {round}: {:?}",
            report.problems
        );
    }
}
