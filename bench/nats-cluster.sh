#!/bin/bash
# Core NATS across a 3-member cluster, berth against nats-server on the same machine in the
# same run: publishers connect to member 2, subscribers to member 1, so every message crosses
# the cluster (berth: its peer port's routes; nats-server: its cluster routes). All six
# processes and the bench share the machine's cores (no pinning: three members each).
# Usage: BERTH=path/to/berth NATS_SERVER=path/to/nats-server [SECS=10] bench/nats-cluster.sh
# Prints one line per run: server, workload, deliveries/s, p50 ms, p99 ms, published/s, missing.
set -u
BERTH=${BERTH:?path of the berth binary}; NATS_SERVER=${NATS_SERVER:?path of nats-server}
SECS=${SECS:-10}
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
start() { # server
  rm -rf "$tmp"/m*
  pids=()
  case $1 in
    berth)
      local ic=m1=http://127.0.0.1:25801,m2=http://127.0.0.1:25802,m3=http://127.0.0.1:25803
      for i in 1 2 3; do
        "$BERTH" server --name m$i --data-dir "$tmp/m$i" --initial-cluster $ic \
          --listen-client-urls http://127.0.0.1:2579$i --listen-peer-urls http://127.0.0.1:2580$i \
          --listen-http-urls http://127.0.0.1:2585$i --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" \
          --listen-nats-urls nats://127.0.0.1:2542$i --log-level error & pids+=($!)
      done ;;
    nats-server)
      for i in 1 2 3; do
        "$NATS_SERVER" -a 127.0.0.1 -p 2542$i -cluster nats://127.0.0.1:2562$i -cluster_name b \
          -routes nats://127.0.0.1:25621,nats://127.0.0.1:25622,nats://127.0.0.1:25623 \
          >"$tmp/nats$i.log" 2>&1 & pids+=($!)
      done ;;
  esac
  sleep 4
}
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; pids=(); }
run() { # label args...
  local label=$1; shift
  for s in berth nats-server; do
    start $s
    "$BERTH" bench nats-pubsub --nats-addr 127.0.0.1:25422 --nats-sub-addr 127.0.0.1:25421 \
      --duration ${SECS}s --warmup 2s "$@" -w json 2>/dev/null | S=$s L=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['S'], os.environ['L'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'], d['published_per_s'], d['missing'])"
    stop
  done
}
run "R3-1pub-1sub-128B" --clients 1 --subscribers 1 --val-size 128
run "R3-4pub-4sub-128B" --clients 4 --subscribers 4 --val-size 128
run "R3-4pub-4queue-128B" --clients 4 --subscribers 4 --queue --val-size 128
