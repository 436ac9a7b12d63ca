#!/usr/bin/env bash
# Signed device reports through real HTTP, from a separate load process, against
# `waveguide run` on SQLite and on PostgreSQL: reports stored per second, p50 and p99
# latency. See docs/performance.md ("Device reports").
#
#   scripts/bench/report_bench.sh [devices] [connections] [duration]    # 10000 64 30s
#
# Builds the release binary and the `report_load` example, writes a fleet repository of
# `devices` devices whose keys the load process signs with, starts `waveguide run` on it
# (first with its SQLite inventory, then with a throw-away PostgreSQL server from
# scripts/postgres), and runs `report_load run` against each for `duration` after a 3 s
# warm-up. Prints the load average before each run and one JSON line per backend.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
devices=${1:-10000}
connections=${2:-64}
duration=${3:-30s}

cargo build --release -q -p waveguide --bin waveguide --example report_load
waveguide=$root/target/release/waveguide
load=$root/target/release/examples/report_load

work=$(mktemp -d /tmp/waveguide-report-bench.XXXXXX)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    [ -n "${WAVEGUIDE_TEST_POSTGRES_DIR:-}" ] && "$root/scripts/postgres" stop "$WAVEGUIDE_TEST_POSTGRES_DIR"
    rm -rf "$work"
}
trap cleanup EXIT

"$load" fleet --devices "$devices" --out "$work/fleet"
git -C "$work/fleet" init -q -b main
git -C "$work/fleet" add .
git -C "$work/fleet" -c user.name=bench -c user.email=bench@example.com -c commit.gpgsign=false \
    commit -q -m "load fleet"

eval "$("$root/scripts/postgres" start)"

for backend in sqlite postgres; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    database=()
    [ "$backend" = postgres ] && database=(--database "$WAVEGUIDE_TEST_POSTGRES_URL")
    "$waveguide" run --repo "$work/fleet" --data "$work/data-$backend" --listen "127.0.0.1:$port" \
        "${database[@]}" 2>"$work/run-$backend.log" &
    server=$!
    for _ in $(seq 600); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/tuf/metadata/timestamp.json" && break
        sleep 0.1
    done
    echo "$backend: $(uptime)"
    "$load" run --server "http://127.0.0.1:$port" --devices "$devices" --connections "$connections" \
        --duration "$duration" | sed "s/^/$backend: /"
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
done
