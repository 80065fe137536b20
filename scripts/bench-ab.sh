#!/usr/bin/env bash
# A/B of two limecached builds under the same load, alternating, on the shared harness's
# 3-node cluster (../shared/bench/lime_cluster.sh, ports 23401-23403): one line per run with
# ops/s, p50, p99, and the three nodes' CPU and context switches per operation.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY
#
# Environment: RUNS (3), CONNS (64), PIPELINE (1), WORKLOAD (put, get or mix: half each), TARGET (leader:
# only the leader's address; all: the three, so two connections in three are on followers).
# Every process it starts is stopped at exit; data lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=../shared/bench
LOADGEN=$BENCH/loadgen/target/release/loadgen
RUNS=${RUNS:-3} CONNS=${CONNS:-64} PIPELINE=${PIPELINE:-1} WORKLOAD=${WORKLOAD:-put}
TARGET=${TARGET:-leader}
export LIME_BENCH_DIR
LIME_BENCH_DIR=$(mktemp -d)
PIDS=()
# The harness's stop: SIGTERM, SIGKILL after a bounded wait, and its watchdog too.
stop() {
    $BENCH/lime_cluster.sh stop
    PIDS=()
}
trap 'stop; rm -rf "$LIME_BENCH_DIR"' EXIT

cpu_ticks() {
    local total=0 pid
    for pid in "${PIDS[@]}"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$total"
}

# Voluntary and involuntary context switches of every thread of the nodes.
switches() {
    cat /proc/"${PIDS[0]}"/task/*/status /proc/"${PIDS[1]}"/task/*/status \
        /proc/"${PIDS[2]}"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'
}

one() {
    local bin=$1 addr out before after
    LIME_BIN=$bin $BENCH/lime_cluster.sh start >/dev/null
    mapfile -t PIDS < <(cat "$LIME_BENCH_DIR"/n{1,2,3}.pid)
    addr=127.0.0.1:23401,127.0.0.1:23402,127.0.0.1:23403
    if [[ $TARGET == leader ]]; then
        addr=$(LIME_BIN=$bin $BENCH/lime_cluster.sh leader | awk '{print $3}')
    fi
    local extra=()
    [[ $WORKLOAD != put ]] && extra=(--prefill)
    before=$(cpu_ticks) switched=$(switches)
    out=$($LOADGEN --proto lime --addr "$addr" --conns "$CONNS" --pipeline "$PIPELINE" \
        --duration 5 --workload "$WORKLOAD" --value-size 100 --keys 1000 "${extra[@]}")
    after=$(cpu_ticks) switched=$(($(switches) - switched))
    python3 -c 'import json, sys
r = json.loads(sys.argv[1]); ms = (int(sys.argv[3]) - int(sys.argv[2])) * 1000 / int(sys.argv[5])
ops = max(r["ops"], 1)
print("%-40s %8.0f/s p50 %5d us p99 %6d us errors %d server CPU %.1f us/op, %.2f switches/op" % (
      sys.argv[4], r["ops_per_sec"], r["p50_us"], r["p99_us"], r["errors"], ms * 1000 / ops,
      int(sys.argv[6]) / ops))' \
        "$out" "$before" "$after" "$bin" "$(getconf CLK_TCK)" "$switched"
    stop
}

for _ in $(seq "$RUNS"); do
    one "$1"
    one "$2"
done
