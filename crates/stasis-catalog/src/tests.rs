use super::*;
use stasis_store::{BlockRef, Compression};

fn new_snap(vm: &str, name: &str, parent: Option<&str>) -> NewSnapshot {
    let payload = NewPayload {
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
    };
    NewSnapshot {
        parent_id: parent.map(String::from),
        compression: Compression::default().into(),
        ..NewSnapshot::new(vm, name, "test", vec![payload])
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

fn no_recompute(_: &Snapshot, _: Option<&Snapshot>) -> Result<AddedSizes> {
    Ok(AddedSizes::default())
}

#[test]
fn delete_leaf_middle_and_subtree() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm", "a", None)).expect("a");
    let b = c.create(&new_snap("vm", "b", Some(&a.id))).expect("b");
    let c1 = c.create(&new_snap("vm", "c1", Some(&b.id))).expect("c1");
    let c2 = c.create(&new_snap("vm", "c2", Some(&b.id))).expect("c2");
    // Middle: children move to a, b is consolidated then deleted.
    let mut asked = Vec::new();
    let gone = c
        .delete("vm/b", false, "t", &mut |child, parent| {
            asked.push((child.id.clone(), parent.map(|p| p.id.clone())));
            Ok(AddedSizes {
                added_bytes: 7,
                ..AddedSizes::default()
            })
        })
        .expect("delete b");
    assert_eq!(gone, vec![b.id.clone()]);
    assert_eq!(asked.len(), 2);
    assert!(
        asked
            .iter()
            .all(|(_, p)| p.as_deref() == Some(a.id.as_str()))
    );
    let c1n = c.get(&c1.id).expect("get").expect("c1");
    assert_eq!(c1n.parent_id.as_deref(), Some(a.id.as_str()));
    assert_eq!(c1n.added_bytes, 7);
    assert_eq!(
        c.get(&b.id).expect("get").expect("b").status,
        Status::Deleted
    );
    let actions: Vec<String> = c
        .events(&b.id)
        .expect("events")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["created", "became_current", "consolidating", "deleted"]
    );
    assert_eq!(c.list(Some("vm")).expect("list").len(), 3);
    let all = c
        .list_filtered(&ListFilter {
            all: true,
            ..ListFilter::default()
        })
        .expect("all");
    assert_eq!(all.len(), 4, "deleted rows stay listable with all");
    // Leaf c2 is current; deleting it makes its parent current.
    assert!(c.get(&c2.id).expect("get").expect("c2").is_current);
    c.delete(&c2.id, false, "t", &mut no_recompute)
        .expect("delete c2");
    assert!(c.get(&a.id).expect("get").expect("a").is_current);
    // A deleted snapshot cannot be deleted, reverted or tagged again.
    assert!(c.delete(&c2.id, false, "t", &mut no_recompute).is_err());
    assert!(c.revert(&c2.id, "t").is_err());
    // Recursive: a and c1 go together.
    let gone = c
        .delete("vm/a", true, "t", &mut no_recompute)
        .expect("recursive");
    assert_eq!(gone.len(), 2);
    assert!(c.list(Some("vm")).expect("list").is_empty());
    assert!(
        c.vm("vm")
            .expect("vm")
            .expect("exists")
            .current_id
            .is_none()
    );
}

#[test]
fn revert_tags_filters_expiry() {
    let mut c = Catalog::open_in_memory().expect("open");
    let mut n = new_snap("vm", "a", None);
    n.tags.insert("env".into(), "prod".into());
    n.expires_at = Some(parse_expiry("2000-01-01").expect("date"));
    n.kind = Kind::Standby;
    n.source_hypervisor = Some(Hypervisor::Firecracker);
    let a = c.create(&n).expect("a");
    let b = c.create(&new_snap("vm", "b", Some(&a.id))).expect("b");
    assert!(b.is_current);
    let a2 = c.revert("vm/a", "t").expect("revert");
    assert!(a2.is_current);
    assert!(!c.get(&b.id).expect("get").expect("b").is_current);
    assert_eq!(c.resolve("vm").expect("current").id, a.id);

    let f = |tags: Vec<(&str, &str)>| ListFilter {
        tags: tags
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        ..ListFilter::default()
    };
    assert_eq!(
        c.list_filtered(&f(vec![("env", "prod")]))
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        c.list_filtered(&f(vec![("env", "dev")]))
            .expect("list")
            .len(),
        0
    );
    c.tag(
        &b.id,
        &[("env".into(), "dev".into()), ("team".into(), "x".into())],
        &[],
        "t",
    )
    .expect("tag");
    c.tag(&b.id, &[], &["team".into()], "t").expect("untag");
    assert_eq!(c.get(&b.id).expect("get").expect("b").tags.len(), 1);
    assert_eq!(
        c.list_filtered(&f(vec![("env", "dev")]))
            .expect("list")
            .len(),
        1
    );
    assert!(
        c.tag(&b.id, &[("bad;key".into(), "v".into())], &[], "t")
            .is_err()
    );
    let many: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), String::new())).collect();
    assert!(c.tag(&b.id, &many, &[], "t").is_err(), "51 tags in all");

    let kind = ListFilter {
        kind: Some(Kind::Standby),
        ..ListFilter::default()
    };
    assert_eq!(c.list_filtered(&kind).expect("list").len(), 1);
    let hv = ListFilter {
        hypervisor: Some(Hypervisor::Qemu),
        ..ListFilter::default()
    };
    assert_eq!(c.list_filtered(&hv).expect("list").len(), 0);
    let expired = ListFilter {
        expired: true,
        ..ListFilter::default()
    };
    assert_eq!(c.list_filtered(&expired).expect("list").len(), 1);
    assert!(
        c.expired_leaves().expect("leaves").is_empty(),
        "a has a child, so it is not an expired leaf"
    );
    let limited = ListFilter {
        limit: Some(1),
        sort: SortField::Name,
        ..ListFilter::default()
    };
    assert_eq!(c.list_filtered(&limited).expect("list")[0].name, "a");
}

#[test]
fn only_a_forked_vm_may_branch_from_another_vms_snapshot() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm", "a", None)).expect("a");
    assert!(c.create(&new_snap("other", "x", Some(&a.id))).is_err());
    c.fork_vm(&a.id, "clone", "t").expect("fork");
    let x = c
        .create(&new_snap("clone", "x", Some(&a.id)))
        .expect("forked child");
    assert_eq!(x.parent_id.as_deref(), Some(a.id.as_str()));
    assert!(c.fork_vm(&a.id, "clone", "t").is_err(), "VM exists");
    assert!(
        c.events(&a.id)
            .expect("events")
            .iter()
            .any(|e| e.action == "forked")
    );
}

#[test]
fn every_vm_has_a_tenant_and_a_foreign_one_is_not_found() {
    let mut c = Catalog::open_in_memory().expect("open");
    // Without a tenant (the CLI), a new VM is the default tenant's.
    let a = c.create(&new_snap("cli-vm", "base", None)).expect("create");
    assert_eq!(a.tenant, DEFAULT_TENANT);
    assert_eq!(c.vm("cli-vm").expect("vm").expect("some").tenant, "default");

    let mut acme = new_snap("acme-vm", "base", None);
    acme.tenant = Some("acme".into());
    let b = c.create(&acme).expect("create");
    assert_eq!(b.tenant, "acme");

    // Another tenant cannot add to acme's VM, by name: it does not exist for it.
    let mut intruder = new_snap("acme-vm", "mine", None);
    intruder.tenant = Some("other".into());
    assert_eq!(
        c.check_new(&intruder).map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        c.create(&intruder).map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
    // Without a tenant (the CLI, an admin) the VM's own tenant is kept.
    let admin = c
        .create(&new_snap("acme-vm", "admin", Some(&b.id)))
        .expect("admin create");
    assert_eq!(admin.tenant, "acme");
    // A bad tenant name is refused for a new VM.
    let mut bad = new_snap("new-vm", "base", None);
    bad.tenant = Some("Not A Name".into());
    assert_eq!(
        c.create(&bad).map_err(|e| e.kind()).err(),
        Some(ErrorKind::InvalidInput)
    );

    // Lists filter by tenant and by snapshot name.
    let only = |tenant: &str, name: Option<&str>| -> Vec<String> {
        c.list_filtered(&ListFilter {
            tenant: Some(tenant.into()),
            name: name.map(String::from),
            ..ListFilter::default()
        })
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect()
    };
    assert_eq!(only("default", None), vec![a.id.clone()]);
    assert_eq!(only("acme", None), vec![b.id.clone(), admin.id.clone()]);
    assert_eq!(only("acme", Some("admin")), vec![admin.id.clone()]);
    assert!(only("other", None).is_empty());

    // A fork belongs to the tenant of the VM it came from.
    let forked = c.fork_vm(&b.id, "acme-fork", "test").expect("fork");
    assert_eq!(forked.tenant, "acme");
    let fork_snap = {
        let mut n = new_snap("acme-fork", "first", Some(&b.id));
        n.tenant = Some("acme".into());
        c.create(&n).expect("create in the fork")
    };
    assert_eq!(fork_snap.tenant, "acme");
}

/// A damaged payload row (a size, a root, a name changed behind the catalog's back) is
/// a corruption error, never a wrong manifest; the database's own check runs clean.
#[test]
fn damaged_payload_rows_fail_their_check() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm1", "base", None)).expect("create");
    assert!(c.check_integrity().expect("check").is_empty());
    for damage in [
        "UPDATE payloads SET size = size + 1",
        "UPDATE payloads SET block_size = 4096",
        "UPDATE payloads SET name = 'rooT'",
        "UPDATE payloads SET root = 'hole' || substr(root, 5)",
    ] {
        c.conn.execute_batch("SAVEPOINT d").expect("savepoint");
        c.conn.execute_batch(damage).expect("damage");
        let err = c.payloads(&a.id).expect_err(damage);
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{damage}");
        c.conn
            .execute_batch("ROLLBACK TO d; RELEASE d")
            .expect("undo");
        assert_eq!(c.payloads(&a.id).expect("intact again").len(), 1);
    }
}
