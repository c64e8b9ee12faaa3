#!/usr/bin/env python3
"""Drive a running `stasis serve` with hypeman's official Python SDK (PyPI `hypeman`).

Every Snapshots and snapshot-schedule method is called as hypeman's clients call it,
with strict response validation (every response parsed into the SDK's typed model,
required fields and enums checked), and every refusal is checked to raise the SDK's
exception class for it. Run by tests/hypeman_sdk.rs, which sets up the repository:

  HYPEMAN_BASE_URL   the server
  HYPEMAN_API_KEY    a write token of tenant `default`
  STASIS_RO_KEY      a read-only token of `default`
  STASIS_OTHER_KEY   a write token of another tenant
  instances `web` (firecracker: disk and memory, all four hooks) and `batch` (a disk).

Exits non-zero with the failed check; prints one line per check.
"""

import os
import sys
import time

import hypeman
from hypeman import Hypeman
from hypeman.types import Instance, Snapshot
from hypeman.types.snapshot_schedule import SnapshotSchedule

BOUND = 240.0  # seconds: the longest any wait here may take
checks = 0


def check(what, ok, detail=""):
    global checks
    if not ok:
        print(f"FAILED: {what} {detail}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


def raises(what, cls, fn):
    try:
        fn()
    except cls as e:
        check(f"{what} raises {cls.__name__} ({e.status_code})", True)
        return
    except Exception as e:  # noqa: BLE001 - a wrong class is the failure reported
        check(f"{what} raises {cls.__name__}", False, f"got {type(e).__name__}: {e}")
    check(f"{what} raises {cls.__name__}", False, "got no error")


def strict(model, obj):
    """Parse obj again, validated, as model: every required field there and typed."""
    data = obj.to_dict(mode="json")
    model.model_validate(data)
    return obj


base = os.environ["HYPEMAN_BASE_URL"]
key = os.environ["HYPEMAN_API_KEY"]
c = Hypeman(base_url=base, api_key=key, max_retries=0, _strict_response_validation=True)
ro = Hypeman(base_url=base, api_key=os.environ["STASIS_RO_KEY"], max_retries=0)
other = Hypeman(base_url=base, api_key=os.environ["STASIS_OTHER_KEY"], max_retries=0)
bad = Hypeman(base_url=base, api_key="stasis_not-a-token", max_retries=0)
check(f"hypeman SDK {hypeman.__version__}", hypeman.__version__.startswith("0.28"))

# Create by instance: hypeman's body only, the server knows the files.
standby = strict(
    Snapshot,
    c.instances.snapshots.create("web", kind="Standby", name="sdk-standby", tags={"env": "ci"}),
)
check("create Standby by instance", standby.kind == "Standby" and standby.name == "sdk-standby")
check("its hypervisor comes from the instance", standby.source_hypervisor == "firecracker")
check("its tags are kept", standby.tags == {"env": "ci"})
check("its size is the files'", standby.size_bytes > 0)
stopped = strict(
    Snapshot,
    c.instances.snapshots.create(
        "web",
        kind="Stopped",
        name="sdk-stopped",
        compression={"enabled": True, "algorithm": "zstd", "level": 3},
    ),
)
check("create Stopped with compression", stopped.kind == "Stopped")
raises(
    "a snapshot name taken",
    hypeman.ConflictError,
    lambda: c.instances.snapshots.create("web", kind="Stopped", name="sdk-stopped"),
)
raises(
    "create for no such instance",
    hypeman.NotFoundError,
    lambda: c.instances.snapshots.create("nope", kind="Stopped", name="x"),
)
raises(
    "create with a read-only token",
    hypeman.PermissionDeniedError,
    lambda: ro.instances.snapshots.create("web", kind="Stopped", name="ro"),
)
raises(
    "create of another tenant's instance",
    hypeman.NotFoundError,
    lambda: other.instances.snapshots.create("web", kind="Stopped", name="theirs"),
)

# List with hypeman's filters, get.
every = [strict(Snapshot, s) for s in c.snapshots.list()]
ids = {s.id for s in every}
check("list holds both", {standby.id, stopped.id} <= ids, str(ids))
check("list by kind", [s.id for s in c.snapshots.list(kind="Stopped") if s.id in ids and s.source_instance_name == "web"] == [stopped.id])
check("list by name", [s.id for s in c.snapshots.list(name="sdk-standby")] == [standby.id])
check("list by instance", {s.id for s in c.snapshots.list(source_instance_id="web")} >= {standby.id, stopped.id})
check("list by tags", [s.id for s in c.snapshots.list(tags={"env": "ci"})] == [standby.id])
got = strict(Snapshot, c.snapshots.get(standby.id))
check("get", got.id == standby.id and got.created_at == standby.created_at)
raises("get of no such snapshot", hypeman.NotFoundError, lambda: c.snapshots.get("nope"))
raises("get with another tenant's token", hypeman.NotFoundError, lambda: other.snapshots.get(standby.id))
check("another tenant lists none of them", not ({s.id for s in other.snapshots.list()} & ids))
raises("list with a bad token", hypeman.AuthenticationError, lambda: bad.snapshots.list())

# Fork.
fork = strict(Instance, c.snapshots.fork(stopped.id, name="sdk-fork"))
check("fork a Stopped snapshot", fork.name == "sdk-fork" and fork.state == "Stopped" and fork.image)
fork2 = strict(Instance, c.snapshots.fork(stopped.id, name="sdk-fork-qemu", target_hypervisor="qemu"))
check("fork a Stopped snapshot onto another hypervisor", fork2.hypervisor == "qemu")
fork3 = strict(Instance, c.snapshots.fork(standby.id, name="sdk-fork-standby", target_state="Standby"))
check("fork a Standby snapshot Standby", fork3.state == "Standby" and fork3.hypervisor == "firecracker")
raises(
    "fork a Standby snapshot onto another hypervisor",
    hypeman.ConflictError,
    lambda: c.snapshots.fork(standby.id, name="sdk-nope", target_hypervisor="qemu"),
)
raises(
    "fork a Stopped snapshot Standby",
    hypeman.ConflictError,
    lambda: c.snapshots.fork(stopped.id, name="sdk-nope", target_state="Standby"),
)
raises(
    "fork to a taken name",
    hypeman.ConflictError,
    lambda: c.snapshots.fork(stopped.id, name="sdk-fork"),
)
raises(
    "fork with a read-only token",
    hypeman.PermissionDeniedError,
    lambda: ro.snapshots.fork(stopped.id, name="sdk-ro"),
)

# Restore in place.
back = strict(Instance, c.instances.snapshots.restore(standby.id, id="web"))
check("restore a Standby snapshot: Running by default (post-restore hook)", back.state == "Running" and back.name == "web")
check("restored on its hypervisor", back.hypervisor == "firecracker")
back = strict(Instance, c.instances.snapshots.restore(standby.id, id="web", target_state="Standby"))
check("restore Standby", back.state == "Standby")
back = strict(Instance, c.instances.snapshots.restore(stopped.id, id="web", target_state="Stopped"))
check("restore a Stopped snapshot", back.state == "Stopped")
raises(
    "restore a Standby snapshot onto another hypervisor",
    hypeman.ConflictError,
    lambda: c.instances.snapshots.restore(standby.id, id="web", target_hypervisor="qemu"),
)
raises(
    "restore a Stopped snapshot Standby",
    hypeman.ConflictError,
    lambda: c.instances.snapshots.restore(stopped.id, id="web", target_state="Standby"),
)
raises(
    "restore another instance's snapshot",
    hypeman.ConflictError,
    lambda: c.instances.snapshots.restore(stopped.id, id="batch"),
)
raises(
    "restore with another tenant's token",
    hypeman.NotFoundError,
    lambda: other.instances.snapshots.restore(stopped.id, id="web"),
)

# Schedules: validation, then one real run (interval 1m) within the bound.
raises(
    "a schedule under a minute",
    hypeman.BadRequestError,
    lambda: c.instances.snapshot_schedule.update("batch", interval="30s", retention={"max_count": 2}),
)
raises(
    "a schedule without retention",
    hypeman.BadRequestError,
    lambda: c.instances.snapshot_schedule.update("batch", interval="1h", retention={}),
)
raises(
    "no schedule yet",
    hypeman.NotFoundError,
    lambda: c.instances.snapshot_schedule.get("batch"),
)
raises(
    "a schedule with a read-only token",
    hypeman.PermissionDeniedError,
    lambda: ro.instances.snapshot_schedule.update("batch", interval="1m", retention={"max_count": 2}),
)
sched = strict(
    SnapshotSchedule,
    c.instances.snapshot_schedule.update(
        "batch",
        interval="1m",
        retention={"max_count": 2, "max_age": "168h"},
        name_prefix="ci",
        metadata={"team": "infra"},
    ),
)
check("set a schedule", sched.interval == "1m" and sched.retention.max_count == 2 and sched.name_prefix == "ci")
check("its first run is an interval away", 50 <= (sched.next_run_at - sched.created_at).total_seconds() <= 70)
got = strict(SnapshotSchedule, c.instances.snapshot_schedule.get("batch"))
check("get the schedule", got.next_run_at == sched.next_run_at and got.metadata == {"team": "infra"})
raises(
    "another tenant's schedule",
    hypeman.NotFoundError,
    lambda: other.instances.snapshot_schedule.get("batch"),
)
start = time.monotonic()
while True:
    got = strict(SnapshotSchedule, c.instances.snapshot_schedule.get("batch"))
    if got.last_run_at is not None:
        break
    if time.monotonic() - start > BOUND:
        check("the schedule ran within the bound", False, f"after {BOUND} s: {got}")
    time.sleep(1)
check("the schedule ran", got.last_error is None and got.last_snapshot_id, str(got))
check("the next run is an interval later", got.next_run_at > got.last_run_at)
made = strict(Snapshot, c.snapshots.get(got.last_snapshot_id))
check("it made a snapshot of the instance", made.source_instance_name == "batch" and made.name.startswith("ci-"), made.name)
check("with the schedule's metadata as tags", (made.tags or {}).get("team") == "infra", str(made.tags))
c.instances.snapshot_schedule.delete("batch")
raises("a removed schedule", hypeman.NotFoundError, lambda: c.instances.snapshot_schedule.get("batch"))
raises("removing it again", hypeman.NotFoundError, lambda: c.instances.snapshot_schedule.delete("batch"))
check("its snapshot stays", strict(Snapshot, c.snapshots.get(made.id)).id == made.id)

# Delete: gone for hypeman's clients.
raises("delete with a read-only token", hypeman.PermissionDeniedError, lambda: ro.snapshots.delete(standby.id))
c.snapshots.delete(standby.id)
raises("a deleted snapshot", hypeman.NotFoundError, lambda: c.snapshots.get(standby.id))
check("a deleted snapshot is not listed", standby.id not in {s.id for s in c.snapshots.list()})
raises("deleting it again", hypeman.NotFoundError, lambda: c.snapshots.delete(standby.id))

print(f"hypeman-sdk: {checks} checks passed", flush=True)
