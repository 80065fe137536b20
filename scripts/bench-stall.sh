#!/usr/bin/env bash
# Does sustained load hold up the nodes or cause elections? A 3-node limecached cluster on the
# shared harness (../shared/bench/lime_cluster.sh, ports 23401-23403), loaded through all
# three addresses; then each node's term (an election after the first shows as a higher
# term) and the node task's "slow batch" warnings (a batch of inputs that held the node's
# task for over 50 ms: nothing left the node meanwhile, heartbeats included).
#
#   cargo build --release -p limecached -p kv-client
#   (cd ../shared/bench/loadgen && cargo build --release)
#   scripts/bench-stall.sh [BINARY]                 # 1,000,000 distinct keys, 64 x 4 in flight
#   MODE=duration SECONDS_=60 scripts/bench-stall.sh  # 60 s of puts over 1,000 keys, 64 clients
#
# Environment: MODE (keys: KEYS distinct keys, each put once; duration: SECONDS_ of puts
# over 1,000 keys), KEYS (1000000), SECONDS_ (60). Every process it starts is stopped at
# exit; data lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=../shared/bench
LOADGEN=$BENCH/loadgen/target/release/loadgen
export LIME_BIN=${1:-$PWD/target/release/limecached}
MODE=${MODE:-keys} KEYS=${KEYS:-1000000} SECONDS_=${SECONDS_:-60}
export LIME_BENCH_DIR
LIME_BENCH_DIR=$(mktemp -d)
trap '$BENCH/lime_cluster.sh stop >/dev/null; rm -rf "$LIME_BENCH_DIR"' EXIT
ADDRS=127.0.0.1:23401,127.0.0.1:23402,127.0.0.1:23403

$BENCH/lime_cluster.sh start >/dev/null
if [[ $MODE == keys ]]; then
    load=(--workload put --seq-keys --keys "$KEYS" --ops "$KEYS" --conns 64 --pipeline 4
        --max-seconds 600)
else
    load=(--workload put --keys 1000 --conns 64 --pipeline 1 --duration "$SECONDS_")
fi
$LOADGEN --proto lime --addr "$ADDRS" --value-size 100 "${load[@]}" | python3 -c 'import json, sys
r = json.load(sys.stdin)
print("%d puts at %.0f/s, p50 %d us, p99 %d us, max %d us, %d errors" % (
      r["ops"], r["ops_per_sec"], r["p50_us"], r["p99_us"], r["max_us"], r["errors"]))'
target/release/kv-client --addr "$ADDRS" status
echo "snapshots: $(cat "$LIME_BENCH_DIR"/n?.log | grep -c 'snapshot saved')"
cat "$LIME_BENCH_DIR"/n?.log | grep -o 'work_ms=[0-9]*' | cut -d= -f2 | sort -n |
    awk '{ n++; sum += $1; max = $1 } END { printf "slow batches: %d, %d ms in all, the longest %d ms\n", n, sum, max }'
