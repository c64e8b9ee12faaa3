//! For tests of this crate and of its users (feature `testing`): the behaviour every
//! catalog has, whatever its database ([`conformance`]), and a real PostgreSQL server
//! in a temporary directory ([`Postgres`], started by `tools/postgres.sh`).
//!
//! The scenarios assert; a failing one panics with what it expected.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use stasis_store::{BlockRef, Compression, Manifest, Role};

use crate::{
    AddedSizes, Catalog, DEFAULT_TENANT, ErrorKind, Hypervisor, Kind, ListFilter, NewPayload,
    NewSnapshot, Result, Snapshot, SortField, Status, TokenMode, parse_expiry,
};

/// Opens another connection to one database.
pub type Opener = Arc<dyn Fn() -> Catalog + Send + Sync>;

/// Run every scenario, each on a new empty database from `fresh` (which answers an
/// [`Opener`] of it: scenarios with two connections call it twice).
pub fn conformance(fresh: &dyn Fn() -> Opener) {
    type Scenario = (&'static str, fn(&mut Catalog));
    let scenarios: [Scenario; 9] = [
        ("create_resolve_list", create_resolve_list),
        ("refusals_change_nothing", refusals_change_nothing),
        (
            "delete_leaf_middle_and_subtree",
            delete_leaf_middle_and_subtree,
        ),
        ("revert_tags_filters_expiry", revert_tags_filters_expiry),
        (
            "only_a_forked_vm_may_branch_from_another_vms_snapshot",
            only_a_forked_vm_may_branch_from_another_vms_snapshot,
        ),
        (
            "every_vm_has_a_tenant_and_a_foreign_one_is_not_found",
            every_vm_has_a_tenant_and_a_foreign_one_is_not_found,
        ),
        (
            "tokens_authenticate_until_revoked",
            tokens_authenticate_until_revoked,
        ),
        ("instances_register_and_go", instances_register_and_go),
        (
            "schedules_set_claim_and_remember_their_snapshots",
            schedules_set_claim_and_remember_their_snapshots,
        ),
    ];
    for (name, scenario) in scenarios {
        eprintln!("catalog conformance: {name}");
        let open = fresh();
        let mut c = open();
        scenario(&mut c);
        assert!(
            c.check_integrity().expect("check").is_empty(),
            "{name}: the catalog's own check"
        );
    }
    eprintln!("catalog conformance: racing_writers");
    racing_writers(&fresh());
    eprintln!("catalog conformance: a second connection sees every commit");
    second_connection_sees_commits(&fresh());
}

/// A snapshot of `vm` with one small disk payload, branching from `parent`.
pub(crate) fn new_snap(vm: &str, name: &str, parent: Option<&str>) -> NewSnapshot {
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

fn no_recompute(_: &Snapshot, _: Option<&Snapshot>) -> Result<AddedSizes> {
    Ok(AddedSizes::default())
}

fn create_resolve_list(c: &mut Catalog) {
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
    // Pages: `limit` plus `after` the last one seen walks every snapshot once, in order.
    for i in 0..5 {
        c.create(&new_snap("vm2", &format!("p{i}"), None))
            .expect("page snap");
    }
    let page = |after: Option<String>| {
        c.list_filtered(&ListFilter {
            limit: Some(3),
            after,
            ..ListFilter::default()
        })
        .expect("page")
    };
    let first = page(None);
    let second = page(first.last().map(|s| s.id.clone()));
    let third = page(second.last().map(|s| s.id.clone()));
    let walked: Vec<String> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|s| s.id.clone())
        .collect();
    let whole: Vec<String> = c
        .list(None)
        .expect("all")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!((first.len(), second.len(), third.len()), (3, 3, 1));
    assert_eq!(
        walked, whole,
        "pages walk the whole list once, in its order"
    );
    let refused = |f: ListFilter| c.list_filtered(&f).map_err(|e| e.kind()).err();
    assert_eq!(
        refused(ListFilter {
            after: Some("nope".into()),
            ..ListFilter::default()
        }),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        refused(ListFilter {
            after: Some(a.id.clone()),
            sort: crate::SortField::Name,
            ..ListFilter::default()
        }),
        Some(ErrorKind::InvalidInput)
    );
}

fn refusals_change_nothing(c: &mut Catalog) {
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

fn delete_leaf_middle_and_subtree(c: &mut Catalog) {
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

fn revert_tags_filters_expiry(c: &mut Catalog) {
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

fn only_a_forked_vm_may_branch_from_another_vms_snapshot(c: &mut Catalog) {
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

fn every_vm_has_a_tenant_and_a_foreign_one_is_not_found(c: &mut Catalog) {
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

fn tokens_authenticate_until_revoked(c: &mut Catalog) {
    assert!(!c.knows_store("s3://b/p").expect("stores"));
    c.claim_store("s3://b/p").expect("claim");
    c.claim_store("s3://b/p").expect("claim again");
    assert!(c.knows_store("s3://b/p").expect("stores"));
    assert!(!c.knows_store("s3://b/other").expect("stores"));
    let (a, sa) = c.create_token("default", TokenMode::ReadWrite).expect("a");
    let (b, sb) = c.create_token("acme", TokenMode::ReadOnly).expect("b");
    let (adm, sadm) = c.create_token("ops", TokenMode::Admin).expect("admin");
    assert_ne!(sa, sb);
    assert_eq!(
        c.tokens().expect("list"),
        vec![a.clone(), b.clone(), adm.clone()]
    );
    assert_eq!(c.authenticate(&sb).expect("auth"), Some(b.clone()));
    assert!(
        c.authenticate(&sadm)
            .expect("auth")
            .is_some_and(|t| t.admin)
    );
    assert!(c.authenticate(&sa[..sa.len() - 1]).expect("auth").is_none());
    assert!(c.authenticate("").expect("auth").is_none());
    let revoked = c.revoke_token(&a.id).expect("revoke");
    assert!(revoked.revoked_at.is_some());
    assert!(c.authenticate(&sa).expect("auth").is_none());
    assert_eq!(c.revoke_token(&a.id).expect("again"), revoked);
    assert_eq!(
        c.revoke_token("nope").map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
}

fn instances_register_and_go(c: &mut Catalog) {
    use crate::{InstanceFile, NewInstance};
    let file = |role, name: &str, path: &str| InstanceFile {
        role,
        name: name.into(),
        path: path.into(),
    };
    let new = |vm: &str, files: Vec<InstanceFile>| NewInstance {
        vm: vm.into(),
        tenant: Some("acme".into()),
        hypervisor: Hypervisor::CloudHypervisor,
        files,
        pre_snapshot: Some("ch-remote pause".into()),
        post_snapshot: None,
        pre_restore: None,
        post_restore: Some("ch-remote restore".into()),
    };
    let files = vec![
        file(Role::Disk, "rootfs.ext4", "/srv/vms/acme/web/rootfs.ext4"),
        file(
            Role::Memory,
            "memory-ranges",
            "/srv/vms/acme/web/snap/memory-ranges",
        ),
        file(
            Role::State,
            "state.json",
            "/srv/vms/acme/web/snap/state.json",
        ),
    ];
    let i = c
        .register_instance(&new("web", files.clone()))
        .expect("register");
    assert_eq!(i.vm.name, "web");
    assert_eq!(i.vm.tenant, "acme");
    assert_eq!(i.files, files, "files in the order given");
    assert_eq!(i.hypervisor, Hypervisor::CloudHypervisor);
    assert_eq!(i.pre_snapshot.as_deref(), Some("ch-remote pause"));
    assert_eq!(i.post_restore.as_deref(), Some("ch-remote restore"));
    assert_eq!(c.instance(&i.vm.id).expect("by id"), Some(i.clone()));
    assert_eq!(
        c.instance_of("web", Some("acme")).expect("own"),
        Some(i.clone())
    );
    assert_eq!(c.instance_of("web", Some("other")).expect("foreign"), None);
    assert_eq!(c.instance("nope").expect("missing"), None);
    let kind = |r: Result<crate::Instance>| r.map_err(|e| e.kind()).err();
    assert_eq!(
        kind(c.register_instance(&new("web", files.clone()))),
        Some(ErrorKind::Conflict)
    );
    let mut foreign = new("web", files.clone());
    foreign.tenant = Some("other".into());
    assert_eq!(
        kind(c.register_instance(&foreign)),
        Some(ErrorKind::NotFound)
    );
    for bad in [
        vec![],
        vec![file(Role::Disk, "d", "relative/d")],
        vec![file(Role::Disk, "d", "/a"), file(Role::State, "d", "/b")],
        vec![
            file(Role::Memory, "m1", "/a"),
            file(Role::Memory, "m2", "/b"),
        ],
        vec![file(Role::Disk, "a/b", "/a")],
    ] {
        assert_eq!(
            kind(c.register_instance(&new("db", bad.clone()))),
            Some(ErrorKind::InvalidInput),
            "{bad:?}"
        );
    }
    assert!(
        c.vm("db").expect("vm").is_none(),
        "a refused registration makes no VM"
    );
    // A VM with snapshots becomes an instance and keeps them; removed, it keeps them too.
    let mut snap = new_snap("old", "base", None);
    snap.tenant = Some("acme".into());
    let s = c.create(&snap).expect("snapshot");
    let old = c
        .register_instance(&new("old", vec![file(Role::Disk, "root", "/srv/old/root")]))
        .expect("register an existing VM");
    assert_eq!(old.vm.current_id.as_deref(), Some(s.id.as_str()));
    let names: Vec<String> = c
        .instances()
        .expect("list")
        .into_iter()
        .map(|i| i.vm.name)
        .collect();
    assert_eq!(names, ["old", "web"]);
    c.unregister_instance("old").expect("remove");
    assert_eq!(c.instance("old").expect("gone"), None);
    assert_eq!(c.resolve("old").expect("the VM's snapshot stays").id, s.id);
    assert_eq!(
        c.unregister_instance("old").map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
}

/// What one connection commits, another sees at once (no cache in between).
fn second_connection_sees_commits(open: &Opener) {
    let mut a = open();
    let b = open();
    let s = a.create(&new_snap("vm", "base", None)).expect("create");
    assert_eq!(b.resolve("vm").expect("resolve").id, s.id);
    a.delete(&s.id, false, "t", &mut no_recompute)
        .expect("delete");
    assert_eq!(
        b.get(&s.id).expect("get").map(|s| s.status),
        Some(Status::Deleted)
    );
    assert!(b.list(Some("vm")).expect("list").is_empty());
}

/// Two connections (two hosts) create, delete, revert and tag in one VM at once, in
/// lockstep (a barrier before each step, so their writes overlap). Every step either
/// works or fails as a conflict, a missing or an invalid snapshot (never a database
/// error); afterwards the tree holds: one current snapshot at most and a live one,
/// every live snapshot's parent live, every name once, what each side was told
/// happened did.
fn racing_writers(open: &Opener) {
    const STEPS: usize = 40;
    let mut first = open();
    let base = first.create(&new_snap("race", "base", None)).expect("base");
    drop(first);
    let barrier = Arc::new(Barrier::new(2));
    let sides: Vec<_> = (0..2u64)
        .map(|side| {
            let open = open.clone();
            let barrier = barrier.clone();
            let base = base.id.clone();
            std::thread::spawn(move || {
                let mut c = open();
                let mut made = Vec::new();
                let mut gone = Vec::new();
                // A small deterministic generator: the two sides take different paths.
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ side;
                for step in 0..STEPS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    barrier.wait();
                    let live: Vec<Snapshot> = c.list(Some("race")).expect("list");
                    let pick = live
                        .get((x >> 8) as usize % live.len().max(1))
                        .map(|s| s.id.clone());
                    let r: Result<()> = match x % 5 {
                        0 | 1 => {
                            // Both sides may take the same name: one of them wins.
                            let name = if x.is_multiple_of(5) {
                                format!("same-{step}")
                            } else {
                                format!("s{side}-{step}")
                            };
                            let parent = c.resolve("race").ok().map(|s| s.id);
                            c.create(&new_snap("race", &name, parent.as_deref()))
                                .map(|s| made.push(s.id))
                        }
                        2 => match pick {
                            Some(id) if id != base => c
                                .delete(&id, false, "t", &mut no_recompute)
                                .map(|ids| gone.extend(ids)),
                            _ => Ok(()),
                        },
                        3 => match pick {
                            Some(id) => c.revert(&id, "t").map(drop),
                            None => Ok(()),
                        },
                        _ => match pick {
                            Some(id) => c
                                .tag(&id, &[(format!("s{side}"), step.to_string())], &[], "t")
                                .map(drop),
                            None => Ok(()),
                        },
                    };
                    if let Err(e) = r {
                        assert!(
                            matches!(
                                e.kind(),
                                ErrorKind::Conflict | ErrorKind::NotFound | ErrorKind::InvalidInput
                            ),
                            "side {side}, step {step}: {e}"
                        );
                    }
                }
                (made, gone)
            })
        })
        .collect();
    let mut made = Vec::new();
    let mut gone = Vec::new();
    for s in sides {
        let (m, g) = s.join().expect("a side panicked");
        made.extend(m);
        gone.extend(g);
    }
    assert!(!made.is_empty(), "no create went through");
    let c = open();
    assert!(c.check_integrity().expect("check").is_empty());
    let all = c
        .list_filtered(&ListFilter {
            vm: Some("race".into()),
            all: true,
            ..ListFilter::default()
        })
        .expect("all");
    let by_id = |id: &str| all.iter().find(|s| s.id == id);
    for id in &made {
        assert!(by_id(id).is_some(), "created {id} is missing");
    }
    for id in &gone {
        assert_eq!(
            by_id(id).map(|s| s.status),
            Some(Status::Deleted),
            "{id} was deleted"
        );
    }
    let live: Vec<&Snapshot> = all.iter().filter(|s| s.status != Status::Deleted).collect();
    assert!(live.iter().filter(|s| s.is_current).count() <= 1);
    for s in &live {
        assert_eq!(s.status, Status::Active, "{} is left {}", s.id, s.status);
        if let Some(p) = &s.parent_id {
            assert!(
                live.iter().any(|l| &l.id == p),
                "{}'s parent {p} is not live",
                s.id
            );
        }
    }
    let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a name repeats");
    if let Some(cur) = c.vm("race").expect("vm").and_then(|v| v.current_id) {
        assert!(
            live.iter().any(|s| s.id == cur),
            "the current snapshot is live"
        );
    }
}

/// A PostgreSQL server in a temporary directory (`tools/postgres.sh`), stopped when
/// dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    url: String,
    databases: AtomicUsize,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/postgres.sh")
}

fn run_script(cmd: &str, dir: &Path) -> std::process::Output {
    let out = Command::new("bash")
        .arg(script())
        .arg(cmd)
        .arg(dir)
        .output()
        .expect("running tools/postgres.sh");
    assert!(
        out.status.success(),
        "tools/postgres.sh {cmd} failed (apt-get install postgresql, as .ci/run does, \
         or set STASIS_SKIP_POSTGRES=1): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postgres {
    /// Start one; `None` (and a line saying so) when `STASIS_SKIP_POSTGRES` is set.
    pub fn start() -> Option<Postgres> {
        if std::env::var_os("STASIS_SKIP_POSTGRES").is_some() {
            eprintln!("skipped: STASIS_SKIP_POSTGRES is set");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run_script("start", dir.path());
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("STASIS_TEST_PG=").map(String::from))
            .expect("tools/postgres.sh printed no STASIS_TEST_PG");
        Some(Postgres {
            dir,
            url,
            databases: AtomicUsize::new(0),
        })
    }

    /// The URL of its database `stasis` (user `stasis`, no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection of the superuser's, to look, make databases and kill connections.
    pub fn admin(&self) -> postgres::Client {
        let mut cfg: postgres::Config = self.url.parse().expect("url");
        cfg.user("postgres").application_name("test-admin");
        cfg.connect(postgres::NoTls).expect("connect as postgres")
    }

    /// A new empty database owned by `stasis`: its URL.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("test_{n}");
        self.admin()
            .batch_execute(&format!("CREATE DATABASE {name} OWNER stasis"))
            .expect("create database");
        match self.url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("no database in {}", self.url),
        }
    }

    /// An [`Opener`] of a new empty database.
    pub fn fresh(&self) -> Opener {
        Postgres::opener(self.database())
    }

    /// An [`Opener`] of the database at `url`.
    pub fn opener(url: String) -> Opener {
        Arc::new(move || Catalog::open_postgres(&url).expect("open the PostgreSQL catalog"))
    }

    /// Stop and start it again on the same port (every connection is cut).
    pub fn restart(&self) {
        Postgres::restart_in(self.dir.path());
    }

    /// Its directory (for [`Postgres::restart_in`] from where `self` cannot go).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Restart the server whose directory is `dir`.
    pub fn restart_in(dir: &Path) {
        run_script("restart", dir);
    }

    /// Cut every connection of stasis's (`application_name` stasis), as a host that
    /// died would lose them, waiting (bounded) until each is gone; how many.
    pub fn kill_stasis_connections(&self) -> i64 {
        self.admin()
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 30000)) \
                 FROM pg_stat_activity \
                 WHERE application_name = 'stasis' AND pid <> pg_backend_pid()",
                &[],
            )
            .expect("terminate")
            .get(0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn schedules_set_claim_and_remember_their_snapshots(c: &mut Catalog) {
    use crate::{NewInstance, NewSchedule};
    let t0: jiff::Timestamp = "2026-12-01T10:00:00Z".parse().expect("t0");
    let minutes = |n: i64| t0 + jiff::SignedDuration::from_mins(n);
    let kind = |r: Result<crate::Schedule>| r.map_err(|e| e.kind()).err();
    let new = NewSchedule {
        interval: "1m".into(),
        max_count: Some(2),
        max_age: None,
        name_prefix: Some("nightly".into()),
        metadata: [("team".to_string(), "web".to_string())].into(),
    };
    // Only an instance has a schedule.
    assert_eq!(
        kind(c.set_schedule("web", &new, t0)),
        Some(ErrorKind::NotFound)
    );
    c.register_instance(&NewInstance {
        vm: "web".into(),
        tenant: None,
        hypervisor: Hypervisor::Qemu,
        files: vec![crate::InstanceFile {
            role: Role::Disk,
            name: "root".into(),
            path: "/srv/web/root.img".into(),
        }],
        pre_snapshot: None,
        post_snapshot: None,
        pre_restore: None,
        post_restore: None,
    })
    .expect("instance");
    for bad in [
        NewSchedule {
            interval: "59s".into(),
            ..new.clone()
        },
        NewSchedule {
            interval: "1x".into(),
            ..new.clone()
        },
        NewSchedule {
            max_count: Some(0),
            ..new.clone()
        },
        NewSchedule {
            max_age: Some("-1h".into()),
            ..new.clone()
        },
        NewSchedule {
            name_prefix: Some("x".repeat(48)),
            ..new.clone()
        },
        NewSchedule {
            name_prefix: Some("Bad Prefix".into()),
            ..new.clone()
        },
        NewSchedule {
            metadata: [("".to_string(), "v".to_string())].into(),
            ..new.clone()
        },
    ] {
        assert_eq!(
            kind(c.set_schedule("web", &bad, t0)),
            Some(ErrorKind::InvalidInput),
            "{bad:?}"
        );
    }
    assert_eq!(c.schedule("web").expect("none yet"), None);
    let s = c.set_schedule("web", &new, t0).expect("set");
    assert_eq!(s.vm.name, "web");
    assert_eq!(s.next_run().expect("next"), minutes(1));
    assert_eq!(s.metadata.get("team").map(String::as_str), Some("web"));
    assert_eq!((s.max_count, s.last_run_at.clone()), (Some(2), None));
    // Two runners read the same due time; only the first claim wins.
    assert!(
        c.claim_run(&s.vm.id, &s.next_run_at, minutes(2))
            .expect("claim")
    );
    assert!(
        !c.claim_run(&s.vm.id, &s.next_run_at, minutes(2))
            .expect("again")
    );
    let snap = c.create(&new_snap("web", "nightly-1", None)).expect("snap");
    c.mark_scheduled(&snap.id, &s.vm.id, minutes(1))
        .expect("mark");
    c.finish_run(&s.vm.id, minutes(1), Some(&snap.id), None)
        .expect("finish");
    let s = c.schedule(&s.vm.id).expect("read").expect("some");
    assert_eq!(s.last_snapshot_id.as_deref(), Some(snap.id.as_str()));
    assert_eq!(s.next_run().expect("next"), minutes(2));
    // A failure keeps the last snapshot and says why; a success clears it.
    c.finish_run(&s.vm.id, minutes(2), None, Some("hook failed"))
        .expect("fail");
    let s = c.schedule("web").expect("read").expect("some");
    assert_eq!(s.last_error.as_deref(), Some("hook failed"));
    assert_eq!(s.last_snapshot_id.as_deref(), Some(snap.id.as_str()));
    // The same interval keeps the next run; another one starts over from now.
    let same = c
        .set_schedule(
            "web",
            &NewSchedule {
                max_count: Some(3),
                ..new.clone()
            },
            minutes(30),
        )
        .expect("same interval");
    assert_eq!(
        (same.next_run_at.clone(), same.max_count),
        (s.next_run_at.clone(), Some(3))
    );
    let hourly = c
        .set_schedule(
            "web",
            &NewSchedule {
                interval: "1h".into(),
                ..new.clone()
            },
            minutes(30),
        )
        .expect("new interval");
    assert_eq!(hourly.next_run().expect("next"), minutes(90));
    assert_eq!(hourly.created_at, s.created_at);
    assert_eq!(c.schedules().expect("all").len(), 1);
    // Scheduled snapshots are remembered until deleted; others are not among them.
    c.create(&new_snap("web", "by-hand", Some(&snap.id)))
        .expect("by hand");
    let listed = c.scheduled_snapshots(&s.vm.id).expect("scheduled");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].snapshot_id, snap.id);
    c.delete(&snap.id, false, "t", &mut no_recompute)
        .expect("delete");
    assert!(c.scheduled_snapshots(&s.vm.id).expect("after").is_empty());
    c.remove_schedule("web").expect("remove");
    assert_eq!(c.schedule("web").expect("gone"), None);
    assert_eq!(
        c.remove_schedule("web").map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
    // Removing the instance removes its schedule.
    c.set_schedule("web", &new, t0).expect("again");
    c.unregister_instance("web").expect("unregister");
    assert!(c.schedules().expect("none").is_empty());
}
