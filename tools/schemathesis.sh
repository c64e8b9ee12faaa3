#!/usr/bin/env bash
# Property-based test of the HTTP API: schemathesis generates requests from the
# server's own /openapi.json and checks that nothing answers 5xx and that every
# response matches the document (schema, status codes, content types).
#
#   tools/schemathesis.sh [path/to/stasis] [max-examples]
#
# Installs schemathesis with pip if it is missing. Runs against a temp repository
# holding a few snapshots, on a free loopback port; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/stasis}")
EXAMPLES=${2:-60}

if ! command -v schemathesis >/dev/null 2>&1; then
  # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told to.
  python3 -m pip install -q schemathesis 2>/dev/null ||
    python3 -m pip install -q --break-system-packages schemathesis
fi

tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

repo=$tmp/repo
mkdir -p "$tmp/files"
"$BIN" --repo "$repo" init >/dev/null
head -c 3000000 /dev/urandom >"$tmp/files/disk.img"
truncate -s 8M "$tmp/files/disk.img"
head -c 1000000 /dev/urandom >"$tmp/files/mem"
"$BIN" --repo "$repo" create web base --disk root="$tmp/files/disk.img" --memory mem="$tmp/files/mem" \
  --hypervisor firecracker --tag env=prod >/dev/null
printf 'changed' | dd of="$tmp/files/disk.img" bs=1 seek=4096 conv=notrunc status=none
"$BIN" --repo "$repo" create web day2 --disk root="$tmp/files/disk.img" >/dev/null
"$BIN" --repo "$repo" create db base --disk root="$tmp/files/disk.img" --expires 2000-01-01 >/dev/null
token=$("$BIN" --repo "$repo" token create --tenant default 2>/dev/null)

STASIS_LOG=warn "$BIN" --repo "$repo" serve --listen 127.0.0.1:0 --payload-root "default=$tmp/files" \
  2>"$tmp/serve.log" &
pid=$!
addr=
for _ in $(seq 1 600); do
  addr=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$tmp/serve.log" | head -n1 || true)
  [ -n "$addr" ] && curl -sf "$addr/health" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/serve.log"; echo "stasis serve died" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$tmp/serve.log"; echo "stasis serve did not start" >&2; exit 1; }
curl -sf -H "Authorization: Bearer $token" "$addr/openapi.json" >"$tmp/openapi.json"

echo "schemathesis against $addr ($EXAMPLES examples per operation)"
rc=0
schemathesis run "$tmp/openapi.json" --url "$addr" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --max-examples "$EXAMPLES" --seed 7 --no-color \
  --request-timeout 30 | tee "$tmp/st.out" || rc=$?
passed=$(grep -Eo '[0-9]+ passed' "$tmp/st.out" | tail -n1 | grep -Eo '[0-9]+' || echo 0)
failed=$(grep -Eo '[0-9]+ failed' "$tmp/st.out" | tail -n1 | grep -Eo '[0-9]+' || echo 0)
if [ "$rc" -ne 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "schemathesis: $passed passed, $failed failed"
exit "$rc"
