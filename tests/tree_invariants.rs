//! Random sequences of create, delete and revert keep the tree's invariants: at most one
//! current snapshot per VM, every live snapshot's parent live (so no cycles and no
//! dangling parents), and every live snapshot reads back byte-identical.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use proptest::prelude::*;
use stasis_catalog::{
    AddedSizes, Catalog, CompressionInfo, ListFilter, NewPayload, NewSnapshot, Status,
};
use stasis_store::{
    Backend, Compression, MemoryBackend, PayloadReader, Role, Store, StoreConfig, ingest_full,
};

#[derive(Clone, Debug)]
enum Op {
    Create {
        vm: u8,
        parent: Option<prop::sample::Index>,
        edits: Vec<(u16, u8, u8)>,
        len: u16,
    },
    Delete {
        pick: prop::sample::Index,
        recursive: bool,
    },
    Revert {
        pick: prop::sample::Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, proptest::option::of(any::<prop::sample::Index>()), proptest::collection::vec((any::<u16>(), 1u8..200, any::<u8>()), 0..6), 1u16..40_000)
            .prop_map(|(vm, parent, edits, len)| Op::Create { vm, parent, edits, len }),
        2 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(pick, recursive)| Op::Delete { pick, recursive }),
        1 => any::<prop::sample::Index>().prop_map(|pick| Op::Revert { pick }),
    ]
}

fn live(cat: &Catalog) -> Vec<stasis_catalog::Snapshot> {
    cat.list_filtered(&ListFilter::default()).expect("list")
}

fn check(cat: &Catalog, store: &Store, model: &HashMap<String, Vec<u8>>) {
    let snaps = live(cat);
    let ids: HashSet<&str> = snaps.iter().map(|s| s.id.as_str()).collect();
    for vm in cat.vms().expect("vms") {
        let current: Vec<_> = snaps
            .iter()
            .filter(|s| s.source_instance_id == vm.id && s.is_current)
            .collect();
        assert!(
            current.len() <= 1,
            "VM {} has {} current snapshots",
            vm.name,
            current.len()
        );
        if let Some(c) = &vm.current_id {
            assert!(
                ids.contains(c.as_str()),
                "VM {}'s current snapshot {c} is not live",
                vm.name
            );
        }
    }
    for s in &snaps {
        // Walk to the root: every step live, never a repeat.
        let mut seen = HashSet::new();
        let mut at = s.parent_id.clone();
        while let Some(p) = at {
            assert!(seen.insert(p.clone()), "cycle through {p}");
            assert!(
                ids.contains(p.as_str()),
                "{} has a parent {p} that is not live",
                s.id
            );
            at = cat.get(&p).expect("get").expect("exists").parent_id;
        }
        let want = &model[&s.id];
        let r = PayloadReader::new(store, s.payloads[0].manifest).expect("reader");
        let mut got = vec![0u8; want.len()];
        assert_eq!(r.read_at(0, &mut got).expect("read"), want.len());
        assert!(&got == want, "{} reads back different bytes", s.id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn create_delete_revert_keep_the_invariants(ops in proptest::collection::vec(op(), 1..30)) {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let mut cfg = StoreConfig { fanout: 4, ..StoreConfig::default() };
        cfg.block_sizes.disk = 4096;
        let store = Store::init(be, cfg).expect("init");
        let mut cat = Catalog::open_in_memory().expect("catalog");
        let dir = tempfile::tempdir().expect("tmp");
        let mut model: HashMap<String, Vec<u8>> = HashMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Create { vm, parent, edits, len } => {
                    let vm = format!("vm{vm}");
                    let same_vm: Vec<_> = live(&cat).into_iter().filter(|s| s.source_instance_name == vm).collect();
                    let parent = match parent {
                        Some(i) if !same_vm.is_empty() => Some(same_vm[i.index(same_vm.len())].clone()),
                        _ => cat.vm(&vm).expect("vm").and_then(|v| v.current_id).and_then(|id| cat.get(&id).expect("get")),
                    };
                    let mut bytes = parent.as_ref().map(|p| model[&p.id].clone()).unwrap_or_default();
                    bytes.resize(usize::from(len), 0);
                    for (off, l, v) in edits {
                        let off = usize::from(off) % bytes.len();
                        let end = (off + usize::from(l)).min(bytes.len());
                        bytes[off..end].fill(v);
                    }
                    let path = dir.path().join(format!("in{n}"));
                    File::create(&path).and_then(|mut f| f.write_all(&bytes)).expect("write");
                    let f = File::open(&path).expect("open");
                    let mut w = store.writer(Compression::default()).expect("writer");
                    let (m, st) = ingest_full(&mut w, &f, bytes.len() as u64, 4096, None, &|_| {}).expect("ingest");
                    w.commit().expect("commit");
                    let s = cat
                        .create(&NewSnapshot {
                            parent_id: parent.map(|p| p.id),
                            compression: CompressionInfo::from(Compression::default()),
                            ..NewSnapshot::new(vm, format!("s{n}"), "prop", vec![NewPayload {
                                name: "root".into(),
                                role: Role::Disk,
                                allocated: st.allocated,
                                data_bytes: st.data_bytes,
                                manifest: m,
                            }])
                        })
                        .expect("create");
                    model.insert(s.id, bytes);
                }
                Op::Delete { pick, recursive } => {
                    let snaps = live(&cat);
                    if snaps.is_empty() { continue; }
                    let target = snaps[pick.index(snaps.len())].id.clone();
                    let gone = cat.delete(&target, recursive, "prop", &mut |_, _| Ok(AddedSizes::default())).expect("delete");
                    for g in gone {
                        prop_assert_eq!(cat.get(&g).expect("get").expect("row stays").status, Status::Deleted);
                    }
                }
                Op::Revert { pick } => {
                    let snaps = live(&cat);
                    if snaps.is_empty() { continue; }
                    let target = snaps[pick.index(snaps.len())].id.clone();
                    prop_assert!(cat.revert(&target, "prop").expect("revert").is_current);
                }
            }
            check(&cat, &store, &model);
        }
    }
}
