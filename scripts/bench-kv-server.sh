#!/usr/bin/env bash
# Stage 0 benchmark: kv-server measured by `kv-client bench`, and redis-server measured by
# `redis-benchmark`, in one run, plus both measured by the one shared load generator
# (shared/bench/loadgen) so that the ratio does not depend on two different generators.
#
#   apt-get install -y redis-server redis-tools         # redis-server, redis-benchmark
#   cargo build --release -p kv-server -p kv-client
#   LOADGEN=/path/to/loadgen scripts/bench-kv-server.sh  # LOADGEN optional
#
# Everything runs on 127.0.0.1 and stops by itself; the servers it starts are stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
KV_PORT=${KV_PORT:-7390}
REDIS_PORT=${REDIS_PORT:-6390}
BIN=target/release

"$BIN/kv-server" --listen "127.0.0.1:$KV_PORT" 2>/dev/null &
kv_pid=$!
redis-server --port "$REDIS_PORT" --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $kv_pid $redis_pid 2>/dev/null || true' EXIT
sleep 0.5

KV_ROW=$(cat <<'PY'
import json, sys
r = json.load(sys.stdin)
print(f"{r['workload']:4} c={r['clients']:<3} P={r['pipeline']:<3} {r['ops_per_sec']:>10.0f} ops/s  p99 {r['p99_us'] / 1000:7.3f} ms")
PY
)
REDIS_ROW=$(cat <<'PY'
import csv, sys
rows = list(csv.reader(sys.stdin))
for row in rows[1:]:
    d = dict(zip(rows[0], row))
    print(f"{d['test']} {float(d['rps']):>10.0f} ops/s  p99 {float(d['p99_latency_ms']):7.3f} ms", end="   ")
print()
PY
)

echo "== kv-client bench against kv-server (ops/s, p99 ms)"
for workload in put get; do
  for pipeline in 1 16; do
    for clients in 1 16 64; do
      "$BIN/kv-client" --addr "127.0.0.1:$KV_PORT" bench --json --workload "$workload" \
        --clients "$clients" --pipeline "$pipeline" --requests "$REQUESTS" --keys 1000 --value-size 100 |
        python3 -c "$KV_ROW"
    done
  done
done

echo "== redis-benchmark against redis-server"
for pipeline in 1 16; do
  for clients in 1 16 64; do
    printf 'c=%-3s P=%-3s ' "$clients" "$pipeline"
    redis-benchmark -p "$REDIS_PORT" -c "$clients" -P "$pipeline" -d 100 -r 1000 -n "$REQUESTS" \
      -t set,get --csv 2>/dev/null | python3 -c "$REDIS_ROW"
  done
done

if [[ -n ${LOADGEN:-} ]]; then
  ROUNDS=${ROUNDS:-3}
  echo "== shared loadgen for both: 64 connections, 4 s after 1 s warmup, 1000 keys, 100 B;"
  echo "   $ROUNDS interleaved rounds, medians (the machine is noisy: trust the ratio)"
  results=$(mktemp)
  for round in $(seq "$ROUNDS"); do
    for workload in put get; do
      for pipeline in 1 16; do
        for proto in lime redis; do
          port=$KV_PORT; [[ $proto == redis ]] && port=$REDIS_PORT
          "$LOADGEN" --proto "$proto" --addr "127.0.0.1:$port" --conns 64 --pipeline "$pipeline" \
            --duration 4 --warmup 1 --workload "$workload" --prefill --keys 1000 --value-size 100 \
            2>/dev/null | tail -n 1 >>"$results"
        done
      done
    done
  done
  python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
for workload in ("put", "get"):
    for pipeline in (1, 16):
        med = {}
        for proto in ("lime", "redis"):
            rs = [r for r in runs if (r["proto"], r["workload"], r["pipeline"]) == (proto, workload, pipeline)]
            med[proto] = (statistics.median(r["ops_per_sec"] for r in rs), statistics.median(r["p99_us"] for r in rs))
        (lt, lp), (rt, rp) = med["lime"], med["redis"]
        print(f"{workload} P={pipeline:<2}  kv-server {lt:>9.0f} ops/s p99 {lp/1000:6.2f} ms   "
              f"redis {rt:>9.0f} ops/s p99 {rp/1000:6.2f} ms   throughput ratio {lt/rt:.2f}")
PY
  rm -f "$results"
fi
