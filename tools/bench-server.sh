#!/usr/bin/env bash
# Load bench of `stasis serve` on loopback: a 10,000-snapshot catalog, wrk from a
# second process. Reports requests/s and p99 per workload.
#
#   tools/bench-server.sh [path/to/stasis] [seconds per run]
#
# The catalog: 3 snapshots are stored for real (a 256 MiB random disk, so range
# reads miss the 128 MiB block cache half the time), then 10,000 more rows are added
# straight into the catalog with python's sqlite3 (100 VMs x 100-deep chains, each
# row sharing the real snapshot's payload manifests, every 10th tagged), which is
# valid since manifests are content-addressed. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/stasis}")
SECS=${2:-10}
command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then echo "stasis serve died:" >&2; tail -20 "$tmp/serve.log" >&2; fi
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
repo=$tmp/repo
mkdir -p "$tmp/files"
"$BIN" --repo "$repo" init >/dev/null
head -c $((256 << 20)) /dev/urandom >"$tmp/files/disk.img"
head -c $((16 << 20)) /dev/urandom >"$tmp/files/mem"
"$BIN" --repo "$repo" create web base --disk root="$tmp/files/disk.img" --memory mem="$tmp/files/mem" --tag env=bench >/dev/null
python3 - "$repo/catalog.db" <<'PY'
import sqlite3, sys, random, string, time
db = sqlite3.connect(sys.argv[1])
src = db.execute("SELECT id FROM snapshots LIMIT 1").fetchone()[0]
cols = [r[1] for r in db.execute("PRAGMA table_info(snapshots)")]
pcols = [r[1] for r in db.execute("PRAGMA table_info(payloads)")]
row = dict(zip(cols, db.execute("SELECT * FROM snapshots WHERE id=?", (src,)).fetchone()))
pays = [dict(zip(pcols, p)) for p in db.execute("SELECT * FROM payloads WHERE snapshot_id=?", (src,))]
rnd = random.Random(1)
def nid():
    return rnd.choice(string.ascii_lowercase) + "".join(rnd.choice(string.ascii_lowercase + string.digits) for _ in range(23))
n = 0
with db:
    for v in range(100):
        vm = nid()
        db.execute("INSERT INTO vms (id, name, created_at, tenant) VALUES (?, ?, ?, 'default')",
                   (vm, f"vm{v}", "2026-01-01T00:00:00Z"))
        parent = None
        for i in range(100):
            sid = nid()
            r = dict(row, id=sid, vm_id=vm, name=f"s{i}", parent_id=parent,
                     created_at="2026-01-01T%02d:%02d:%02d.%06dZ" % (v // 60, v % 60, i // 60, n))
            db.execute(f"INSERT INTO snapshots ({','.join(r)}) VALUES ({','.join('?' * len(r))})", list(r.values()))
            for p in pays:
                # The row's check covers its snapshot id; a copy goes without one, as
                # rows written before checks existed do.
                p = dict(p, snapshot_id=sid, root=p["root"].split("#")[0])
                db.execute(f"INSERT INTO payloads ({','.join(p)}) VALUES ({','.join('?' * len(p))})", list(p.values()))
            if i % 10 == 0:
                db.execute("INSERT INTO tags (snapshot_id, key, value) VALUES (?, 'env', 'bench')", (sid,))
            parent = sid
            n += 1
        db.execute("UPDATE vms SET current_id=? WHERE id=?", (parent, vm))
print(f"catalog: {db.execute('SELECT count(*) FROM snapshots').fetchone()[0]} snapshots")
PY
token=$("$BIN" --repo "$repo" token create --tenant default 2>/dev/null)
base=$("$BIN" --repo "$repo" --json show web | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
one=$("$BIN" --repo "$repo" --json list --vm vm42 --limit 60 | python3 -c 'import json,sys; print(json.load(sys.stdin)[50]["id"])')

STASIS_LOG=warn "$BIN" --repo "$repo" serve --listen 127.0.0.1:0 2>"$tmp/serve.log" &
pid=$!
addr=
for _ in $(seq 1 600); do
  addr=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$tmp/serve.log" | head -n1 || true)
  [ -n "$addr" ] && curl -sf "$addr/health" >/dev/null && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$tmp/serve.log"; exit 1; }

cat >"$tmp/range.lua" <<'LUA'
local size = tonumber(os.getenv("PAYLOAD_SIZE"))
local path = os.getenv("PAYLOAD_PATH")
local auth = "Bearer " .. os.getenv("TOKEN")
local len = 65536
math.randomseed(os.time())
request = function()
  local off = math.random(0, (size - len) / 4096) * 4096
  return wrk.format("GET", path, { ["Range"] = "bytes=" .. off .. "-" .. (off + len - 1), ["Authorization"] = auth })
end
response = function(status, headers, body)
  if status ~= 206 then error("status " .. status) end
end
LUA

run() { # NAME CONNECTIONS WRK-ARGS...
  local name=$1 c=$2; shift 2
  local out
  out=$(wrk -t2 -c"$c" -d"${SECS}s" --latency "$@")
  local rps p99 errs
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" | tr '\n' ' ' || true)
  printf '%-44s c=%-3s %10s req/s  p99 %8s  %s\n' "$name" "$c" "$rps" "$p99" "$errs"
}
H="Authorization: Bearer $token"
echo "stasis serve on $addr, 10,001 snapshots, wrk -t2 -d${SECS}s (2 cores shared by server and wrk)"
run "GET /snapshots?source_instance_id=vm42&limit=50" 16 -H "$H" "$addr/snapshots?source_instance_id=vm42&limit=50"
run "GET /snapshots?tags[env]=bench&limit=100" 16 -H "$H" "$addr/snapshots?tags%5Benv%5D=bench&limit=100"
run "GET /snapshots (all 10,001)" 4 -H "$H" "$addr/snapshots"
run "GET /snapshots/{id}" 16 -H "$H" "$addr/snapshots/$one"
run "GET /health (no auth, no catalog)" 16 "$addr/health"
PAYLOAD_SIZE=$((256 << 20)) PAYLOAD_PATH="/snapshots/$base/payloads/root" TOKEN=$token \
  run "GET payload, random 64 KiB ranges (256 MiB)" 16 -s "$tmp/range.lua" "$addr"
