#!/usr/bin/env bash
# Stage 8 benchmark: a 3-node `membership` cluster on 127.0.0.1 holding KEYS keys of 100
# bytes, then a fourth node added while writes flow.
#
#   cargo build --release -p membership -p kv-client
#   KEYS=1000000 DURATION=6 scripts/bench-membership.sh
#
# 1. Put throughput and latency (64 clients, DURATION s) before any change.
# 2. The same load, with node 4 started with `--join` (it sends add_member at once) one
#    second in: the time from starting node 4 until `members` lists it as a voter (polled
#    every 20 ms), the leader's own log times for the same steps, and the load's figures.
# 3. The same load with node 4 removed one second in.
# Every process it starts is stopped at exit; data lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
DURATION=${DURATION:-6}
BIN=target/release
DIR=$(mktemp -d)
PEERS=1=127.0.0.1:7211,2=127.0.0.1:7212,3=127.0.0.1:7213
ADDRS=127.0.0.1:7211,127.0.0.1:7212,127.0.0.1:7213
declare -A PIDS
cleanup() { [ -n "${KEEP_LOGS:-}" ] && cp "$DIR"/*.log "$KEEP_LOGS"/; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

start() { # start ID FLAGS...
  local id=$1; shift
  "$BIN/membership" --id "$id" --listen "127.0.0.1:721$id" --data-dir "$DIR/n$id" "$@" \
    2>>"$DIR/n$id.log" &
  PIDS[$id]=$!
}
leader() { "$BIN/kv-client" --addr "$ADDRS" status 2>/dev/null | awk '/^leader:/ { print $2 }'; }
wait_leader() { for _ in $(seq 100); do [ -n "$(leader)" ] && return; sleep 0.1; done; echo "no leader" >&2; exit 1; }
voter() { "$BIN/kv-client" --addr "$ADDRS" members 2>/dev/null | awk -v n="$1" '$1 == n { print $3 }'; }
bench() { "$BIN/kv-client" --addr "$ADDRS" bench --clients 64 --keys "$KEYS" "$@" --json; }
row() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("%8.0f puts/s  p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms  failed %d" % (r["ops_per_sec"], r["p50_us"]/1000, r["p99_us"]/1000, r["max_us"]/1000, sum(r["failed"].values())))'; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

for id in 1 2 3; do start "$id" --peers "$PEERS"; done
wait_leader
t0=$(now)
bench --workload get --requests 1 >/dev/null # writes every key once first
echo "loaded $KEYS keys in $(since "$t0") s"

echo -n "before any change:        "
bench --workload put --duration "$DURATION" | row

bench --workload put --duration "$DURATION" >"$DIR/add.json" &
BENCH=$!
sleep 1
t0=$(now)
start 4 --join 127.0.0.1:7211
deadline=$((SECONDS + 120))
until [ "$(voter 4)" = "yes" ]; do
  ((SECONDS < deadline)) || { echo "node 4 was not a voter within 120 s" >&2; exit 1; }
  sleep 0.02
done
added=$(since "$t0")
wait "$BENCH"
echo -n "adding node 4:            "; row <"$DIR/add.json"
echo "node 4 was a voter $added s after it started (and asked to be added)"
grep -h "membership change\|sending a snapshot\|snapshot installed\|promoting" "$DIR"/n[123].log |
  sed 's/^/  leader log: /' | cut -c1-160

bench --workload put --duration "$DURATION" >"$DIR/remove.json" &
BENCH=$!
sleep 1
"$BIN/kv-client" --addr "$ADDRS" remove-member 4 >/dev/null
wait "$BENCH"
echo -n "removing node 4:          "; row <"$DIR/remove.json"

grep -h "candidate\|lost contact" "$DIR"/n*.log | sed 's/^/  election: /' | cut -c1-160 || true
echo "RSS: $(for id in 1 2 3; do awk -v n="$id" '/VmRSS/ { printf "node %s %d MiB  ", n, $2 / 1024 }' "/proc/${PIDS[$id]}/status"; done)"
