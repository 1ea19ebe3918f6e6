#!/bin/bash
# A/B of two berth builds on one node: put, 64 clients over 8 connections, 10 s, server pinned
# to core 0 and the bench (always the NEW build's) to core 1, rounds alternating.
# Usage: NEW=path/to/berth OLD=path/to/berth bench/ab-put.sh
set -u
NEW=${NEW:?path of the new berth binary}; OLD=${OLD:?path of the old berth binary}
run() { # bin label
  rm -rf ${TMPDIR:-/tmp}/berth-ab-data; taskset -c 0 $1 server --data-dir ${TMPDIR:-/tmp}/berth-ab-data --listen-client-urls http://127.0.0.1:24790 --listen-peer-urls http://127.0.0.1:24800 --listen-http-urls http://127.0.0.1:24850 --log-level error & pid=$!
  sleep 1.5
  taskset -c 1 $NEW bench put --endpoints 127.0.0.1:24790 --clients 64 --conns 8 --duration 10s -w json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('$2', d['throughput'], d['latency_ms']['p50'], d['latency_ms']['p99'])" 2>&1 | tail -1
  kill $pid; wait $pid 2>/dev/null
}
for r in 1 2 3; do run $NEW new; run $OLD old; done
