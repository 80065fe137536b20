#!/usr/bin/env bash
# Stage 7 benchmark: a 3-node `compaction` cluster on 127.0.0.1 with KEYS keys of 100 bytes.
#
#   cargo build --release -p compaction -p raft-election -p kv-client
#   KEYS=1000000 scripts/bench-compaction.sh
#
# 1. Steady-state put throughput (64 clients, DURATION s) with compaction on (default
#    thresholds) and off (the stage 6 binary, same code without snapshots), over a state
#    of STEADY_KEYS keys, and with a threshold ten times lower than the default (the stage 6
#    binary keeps its whole log in memory, so it is not run at a million keys).
# 2. A compaction cluster is loaded with KEYS keys; a follower is killed, its data dir
#    wiped, and restarted: the time until it has applied the leader's commit index (polled
#    every 20 ms), and its peak RSS (VmHWM).
# Every process it starts is stopped at exit; data lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
STEADY_KEYS=${STEADY_KEYS:-100000}
DURATION=${DURATION:-20}
BIN=target/release
DIR=$(mktemp -d)
PEERS=1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203
ADDRS=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
declare -A PIDS
cleanup() { [ -n "${KEEP_LOGS:-}" ] && tail -n 5 "$DIR"/*.log; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

start() { # start BINARY ID [extra flags]
  local bin=$1 id=$2; shift 2
  "$BIN/$bin" --id "$id" --listen "127.0.0.1:720$id" --peers "$PEERS" --data-dir "$DIR/$bin/n$id" "$@" \
    2>>"$DIR/$bin-n$id.log" &
  PIDS[$id]=$!
}
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
field() { # field NODE COLUMN: a column of the status table's row for NODE
  "$BIN/kv-client" --addr "$ADDRS" status | awk -v n="$1" -v c="$2" '$1 == n { print $c }'
}
leader() { "$BIN/kv-client" --addr "$ADDRS" status | awk '/^leader:/ { print $2 }'; }
wait_leader() { for _ in $(seq 100); do [ -n "$(leader 2>/dev/null)" ] && return; sleep 0.1; done; echo "no leader" >&2; exit 1; }
bench() { "$BIN/kv-client" --addr "$ADDRS" bench --clients 64 "$@" --json; }
row() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("%8.0f puts/s  p50 %6.2f ms  p99 %6.2f ms" % (r["ops_per_sec"], r["p50_us"]/1000, r["p99_us"]/1000))'; }

load() { # load KEYS BINARY [flags]: start a cluster of BINARY and write KEYS keys once each
  local keys=$1 bin=$2; shift 2
  for id in 1 2 3; do start "$bin" "$id" "$@"; done
  wait_leader
  local t0; t0=$(date +%s.%N)
  # A `get` run writes every key once first; one get after that.
  bench --keys "$keys" --workload get --requests 1 >/dev/null
  echo "$bin $*: loaded $keys keys in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
}

for config in raft-election compaction "compaction --snapshot-threshold 10000"; do
  # shellcheck disable=SC2086 # the flags are meant to split
  load "$STEADY_KEYS" $config
  echo -n "$config: steady puts over $STEADY_KEYS keys: "
  bench --keys "$STEADY_KEYS" --workload put --duration "$DURATION" | row
  grep -h "candidate" "$DIR"/*.log | sed 's/^/  election: /' || true
  stop_all
  rm -f "$DIR"/*.log; rm -rf "$DIR/compaction" "$DIR/raft-election"
done

load "$KEYS" compaction
l=$(leader)
f=$(( l % 3 + 1 ))
ls -l "$DIR/compaction/n$l"
kill -9 "${PIDS[$f]}"; wait "${PIDS[$f]}" 2>/dev/null || true
rm -rf "$DIR/compaction/n$f"
target=$(field "$l" 5)
t0=$(date +%s.%N)
start compaction "$f"
until [ "$(field "$f" 6 2>/dev/null || echo 0)" -ge "$target" ] 2>/dev/null; do sleep 0.02; done
t1=$(date +%s.%N)
echo "wiped follower $f caught up to $target in $(python3 -c "print(f'{$t1 - $t0:.2f}')") s," \
  "peak RSS $(awk '/VmHWM/ { print $2 / 1024 " MiB" }' "/proc/${PIDS[$f]}/status")," \
  "leader RSS $(awk '/VmRSS/ { print $2 / 1024 " MiB" }' "/proc/${PIDS[$l]}/status")"
ls -l "$DIR/compaction/n$f"
grep -h "taking a snapshot\|snapshot written\|candidate" "$DIR"/compaction-n*.log | tail -5 || true
