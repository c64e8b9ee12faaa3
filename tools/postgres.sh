#!/usr/bin/env bash
# A real PostgreSQL server in a temporary directory, for the fleet tests and benchmarks.
#
#   tools/postgres.sh start DIR   # initdb'd cluster in DIR, run as an unprivileged user;
#                                 # prints STASIS_TEST_PG=postgres://stasis@127.0.0.1:PORT/stasis
#   tools/postgres.sh stop DIR    # fast shutdown (tolerates a server that already exited)
#   tools/postgres.sh restart DIR # stop, then start on the same port
#
# Uses Debian's server binaries (/usr/lib/postgresql/<version>/bin, package postgresql).
# initdb refuses root, so as root the cluster runs as the `postgres` user (its parents
# made traversable). Every wait is bounded.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,11p' "$0" >&2; exit 2; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "postgres.sh: no PostgreSQL server (apt-get install postgresql)" >&2; exit 1; }

as_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

data=$dir/data
ctl() {
  local port
  port=$(cat "$dir/port")
  as_user "$bin/pg_ctl" -D "$data" -l "$dir/log" -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on" "$@"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case $cmd in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  data=$dir/data
  if [ "$(id -u)" = 0 ]; then
    # The server's user must reach its directory through every parent.
    p=$dir
    while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
    chown postgres "$dir"
  fi
  for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 30000))
    port_free "$port" && break
  done
  echo "$port" >"$dir/port"
  as_user "$bin/initdb" -D "$data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  ctl -w start >/dev/null || { tail -20 "$dir/log" >&2; exit 1; }
  as_user "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE stasis LOGIN" -c "CREATE DATABASE stasis OWNER stasis" >/dev/null
  echo "STASIS_TEST_PG=postgres://stasis@127.0.0.1:$port/stasis" | tee "$dir/env"
  ;;
stop)
  [ -f "$dir/port" ] || exit 0
  ctl -m fast stop >/dev/null 2>&1 || true
  ;;
restart)
  ctl -m fast stop >/dev/null 2>&1 || true
  ctl -w start >/dev/null || { tail -20 "$dir/log" >&2; exit 1; }
  ;;
*)
  sed -n '2,11p' "$0" >&2
  exit 2
  ;;
esac
