use super::*;
use stasis_store::codec::Compression;
use stasis_store::manifest::BlockRef;

fn new_snap(vm: &str, name: &str, parent: Option<&str>) -> NewSnapshot {
    NewSnapshot {
        vm: vm.into(),
        name: name.into(),
        parent_id: parent.map(String::from),
        created_by: "test".into(),
        description: None,
        compression: Compression::default().into(),
        uncompressed_size_bytes: 0,
        compressed_size_bytes: 0,
        added_bytes: 0,
        make_current: true,
        payloads: vec![NewPayload {
            name: "root".into(),
            role: Role::Disk,
            allocated: 10,
            data_bytes: 10,
            manifest: Manifest {
                size: 123,
                block_size: 65536,
                fanout: 64,
                root: BlockRef::Zero,
            },
        }],
    }
}

#[test]
fn create_resolve_list() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm1", "base", None)).expect("create");
    assert!(a.is_current);
    assert_eq!(a.payloads.len(), 1);
    assert_eq!(a.payloads[0].manifest.size, 123);
    let b = c
        .create(&new_snap("vm1", "child", Some(&a.id)))
        .expect("create");
    assert_eq!(c.resolve("vm1").expect("vm").id, b.id);
    assert_eq!(c.resolve("vm1/base").expect("name").id, a.id);
    assert_eq!(c.resolve(&a.id).expect("id").name, "base");
    assert!(!c.get(&a.id).expect("get").expect("some").is_current);
    assert_eq!(c.list(Some("vm1")).expect("list").len(), 2);
    assert_eq!(
        c.resolve("nope").map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn refusals_change_nothing() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm1", "base", None)).expect("create");
    assert_eq!(
        c.create(&new_snap("vm1", "base", None))
            .map_err(|e| e.kind())
            .err(),
        Some(ErrorKind::Conflict)
    );
    assert_eq!(
        c.create(&new_snap("vm1", "Bad", None))
            .map_err(|e| e.kind())
            .err(),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        c.create(&new_snap("vm1", "x", Some("nope")))
            .map_err(|e| e.kind())
            .err(),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        c.create(&new_snap("vm2", "x", Some(&a.id)))
            .map_err(|e| e.kind())
            .err(),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(c.list(None).expect("list").len(), 1);
    assert!(c.vm("vm2").expect("vm").is_none());
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("catalog.db");
    let id = {
        let mut c = Catalog::open(&p).expect("open");
        c.create(&new_snap("vm1", "base", None)).expect("create").id
    };
    let c = Catalog::open(&p).expect("reopen");
    assert_eq!(c.resolve("vm1/base").expect("resolve").id, id);
}
