#!/usr/bin/env bash
# A real Garage cluster on loopback, for the fleet tests and benchmarks.
#
#   tools/garage.sh start DIR [NODES]   # NODES (default 3) nodes, replication factor NODES;
#                                       # prints the AWS_* variables and the bucket, KEY=VALUE
#   tools/garage.sh stop DIR [N]        # stop every node, or node N only
#   tools/garage.sh restart DIR N       # start node N again after a stop
#
# Uses $GARAGE, else `garage` on PATH, else ~/.cargo/bin/garage (`cargo install garage
# --locked`, as .ci/run does). Every wait is bounded; a node that does not come up makes
# `start` fail with the end of its log. Packs arrive compressed, so Garage's own block
# compression is off.
set -euo pipefail

garage=${GARAGE:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
[ -x "$garage" ] || { echo "garage.sh: no garage binary (cargo install garage --locked)" >&2; exit 1; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,10p' "$0" >&2; exit 2; }

g() { local n=$1; shift; "$garage" -c "$dir/n$n/garage.toml" "$@"; }

# Wait up to $1 tenths of a second for command "${@:2}" to succeed.
wait_for() {
  local tries=$1; shift
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
listening() { ! port_free "$1"; }

start_node() {
  local n=$1
  "$garage" -c "$dir/n$n/garage.toml" server >>"$dir/n$n/log" 2>&1 &
  echo $! >"$dir/n$n/pid"
}

stop_node() {
  local n=$1 pid
  pid=$(cat "$dir/n$n/pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  # Bounded: a node that ignores SIGTERM for 10 s is killed.
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/n$n/pid"
}

fail() {
  echo "garage.sh: $1" >&2
  for log in "$dir"/n*/log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -20 "$log" >&2; }; done
  exit 1
}

case $cmd in
start)
  nodes=${3:-3}
  mkdir -p "$dir"
  secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  # Three ports per node from a random base, each checked free.
  for _ in $(seq 1 20); do
    base=$((20000 + RANDOM % 30000))
    ok=1
    for p in $(seq "$base" $((base + 3 * nodes))); do port_free "$p" || { ok=0; break; }; done
    [ "$ok" = 1 ] && break
  done
  [ "$ok" = 1 ] || fail "no free ports"
  for n in $(seq 1 "$nodes"); do
    rpc=$((base + 3 * (n - 1))); s3=$((rpc + 1)); admin=$((rpc + 2))
    mkdir -p "$dir/n$n/meta" "$dir/n$n/data"
    cat >"$dir/n$n/garage.toml" <<EOF
metadata_dir = "$dir/n$n/meta"
data_dir = "$dir/n$n/data"
db_engine = "sqlite"
replication_factor = $nodes
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
    echo "$s3" >"$dir/n$n/s3_port"
    start_node "$n"
  done
  for n in $(seq 1 "$nodes"); do
    wait_for 300 g "$n" status || fail "node $n did not answer in 30 s"
  done
  ids=()
  for n in $(seq 1 "$nodes"); do ids+=("$(g "$n" node id -q)"); done
  for n in $(seq 2 "$nodes"); do
    wait_for 100 g 1 node connect "${ids[$((n - 1))]}" || fail "node 1 could not connect to node $n"
  done
  for n in $(seq 1 "$nodes"); do
    g 1 layout assign -z dc1 -c 1G "${ids[$((n - 1))]%@*}" >/dev/null || fail "layout assign of node $n"
  done
  g 1 layout apply --version 1 >/dev/null || fail "layout apply"
  # The bucket can be made once the layout has reached a quorum of nodes.
  wait_for 300 g 1 bucket create stasis || fail "bucket create"
  key_id=GK$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
  key_secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  g 1 key import --yes -n stasis "$key_id" "$key_secret" >/dev/null || fail "key import"
  g 1 bucket allow --read --write --owner stasis --key "$key_id" >/dev/null || fail "bucket allow"
  s3=$(cat "$dir/n1/s3_port")
  # Ready when every node's S3 API listens.
  for n in $(seq 1 "$nodes"); do
    wait_for 300 listening "$(cat "$dir/n$n/s3_port")" || fail "node $n's S3 API is not listening"
  done
  {
    echo "AWS_ENDPOINT_URL=http://127.0.0.1:$s3"
    echo "AWS_ACCESS_KEY_ID=$key_id"
    echo "AWS_SECRET_ACCESS_KEY=$key_secret"
    echo "AWS_REGION=garage"
    echo "AWS_ALLOW_HTTP=true"
    echo "STASIS_TEST_BUCKET=stasis"
  } | tee "$dir/env"
  ;;
stop)
  if [ -n "${3:-}" ]; then
    stop_node "$3"
  else
    for d in "$dir"/n*/; do n=${d%/}; stop_node "${n##*/n}"; done
  fi
  ;;
restart)
  [ -n "${3:-}" ] || fail "restart needs a node number"
  start_node "$3"
  wait_for 300 g "$3" status || fail "node $3 did not answer in 30 s"
  ;;
*)
  sed -n '2,10p' "$0" >&2
  exit 2
  ;;
esac
