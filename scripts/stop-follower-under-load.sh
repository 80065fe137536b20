#!/usr/bin/env bash
# What clients of a follower see when it is stopped cleanly (SIGTERM) under load: one
# connection pipelines session puts to a follower of the shared harness's 3-node cluster for
# 2 s, the follower gets SIGTERM after 1 s, and the answers are counted by outcome. Every
# write read before the signal should be answered "ok"; writes sent after it are not read.
#
#   scripts/stop-follower-under-load.sh [BINARY]     (default target/release/limecached)
#
# Ports 24501-24503; every process it starts is stopped at exit; data in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=../shared/bench
BIN=$(realpath "${1:-target/release/limecached}")
export LIME_BENCH_DIR LIME_BENCH_PORT=24500
LIME_BENCH_DIR=$(mktemp -d)
trap '$BENCH/lime_cluster.sh stop >/dev/null 2>&1; rm -rf "$LIME_BENCH_DIR"' EXIT
LIME_BIN=$BIN $BENCH/lime_cluster.sh start >/dev/null
read -r leader _ _ <<<"$(LIME_BIN=$BIN $BENCH/lime_cluster.sh leader)"
follower=$((leader % 3 + 1))
python3 - "127.0.0.1:$((LIME_BENCH_PORT + follower))" "$(cat "$LIME_BENCH_DIR/n$follower.pid")" <<'PY'
import collections, json, os, signal, socket, sys, threading, time
host, port = sys.argv[1].split(":")
pid = int(sys.argv[2])
conn = socket.create_connection((host, int(port)))
counts = collections.Counter()
def read():
    try:
        for line in conn.makefile("rb"):
            answer = json.loads(line)
            counts["ok" if answer.get("ok") else answer.get("error")] += 1
    except ConnectionResetError:
        pass  # the follower closed with writes sent after the signal unread
reader = threading.Thread(target=read)
reader.start()
start, sent, signalled = time.time(), 0, False
try:
    while time.time() - start < 2.0:
        batch = "".join(
            json.dumps({"id": n, "op": "put", "key": f"k{n % 1000}", "value": "v" * 100,
                        "client": "stop-test", "seq": n + 1}) + "\n"
            for n in range(sent, sent + 50))
        conn.sendall(batch.encode())
        sent += 50
        if not signalled and time.time() - start > 1.0:
            os.kill(pid, signal.SIGTERM)
            signalled = True
        time.sleep(0.002)
except (BrokenPipeError, ConnectionResetError):
    pass
reader.join(timeout=20)
print(f"follower {pid}: sent {sent}, answers {dict(counts)}")
PY
