#!/bin/bash
# A/B of two berth builds on one node, any `berth bench` workload: the server pinned to core 0
# and the bench (always the NEW build's) to core 1, rounds alternating, 10 s each.
# Usage: NEW=path/to/berth OLD=path/to/berth [ROUNDS=3] bench/ab.sh <workload> [bench args...]
#   e.g. bench/ab.sh put --clients 64 --conns 8
#        bench/ab.sh range --consistency l --clients 64 --conns 8
#        bench/ab.sh watch --watchers 10000 --conns 8 --rate 100
# Prints one line per run: label, ops/s, p50 ms, p99 ms.
set -u
NEW=${NEW:?path of the new berth binary}; OLD=${OLD:?path of the old berth binary}
ROUNDS=${ROUNDS:-3}
data=${TMPDIR:-/tmp}/berth-ab-data
run() { # label server-binary workload...
  local label=$1 server=$2; shift 2
  rm -rf "$data"
  taskset -c 0 "$server" server --data-dir "$data" --listen-client-urls http://127.0.0.1:24790 \
    --listen-peer-urls http://127.0.0.1:24800 --listen-http-urls http://127.0.0.1:24850 \
    --log-level error & local pid=$!
  sleep 1.5
  taskset -c 1 "$NEW" bench "$@" --endpoints 127.0.0.1:24790 --duration 10s -w json 2>/dev/null \
    | LABEL=$label python3 -c "import json,os,sys; d=json.load(sys.stdin); print(os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])" 2>&1 | tail -1
  kill $pid; wait $pid 2>/dev/null
}
for r in $(seq "$ROUNDS"); do
  run new "$NEW" "$@"
  run old "$OLD" "$@"
done
