#!/bin/bash
# JetStream on three replicas, berth against nats-server on the same machine in the same run:
# a 3-member cluster of each (berth: a stream's own Raft group on the members; nats-server:
# its JetStream cluster), the bench stream created with 3 replicas, the bench connected to
# member 2. berth acknowledges a publish once a quorum has it in its fsynced Raft log;
# nats-server runs with its default (no fsync; sync every 2 minutes) and with
# `sync_interval: always`. All six processes and the bench share the machine's cores.
# Usage: BERTH=path/to/berth NATS_SERVER=path/to/nats-server [SECS=10] bench/jetstream-cluster.sh
# Prints one line per run: server, workload, acknowledged publishes (or acked consumed
# messages)/s, p50 ms, p99 ms.
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
      local ic=m1=http://127.0.0.1:26801,m2=http://127.0.0.1:26802,m3=http://127.0.0.1:26803
      for i in 1 2 3; do
        "$BERTH" server --name m$i --data-dir "$tmp/m$i" --initial-cluster $ic \
          --listen-client-urls http://127.0.0.1:2679$i --listen-peer-urls http://127.0.0.1:2680$i \
          --listen-http-urls http://127.0.0.1:2685$i --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" \
          --listen-nats-urls nats://127.0.0.1:2642$i --log-level error & pids+=($!)
      done ;;
    nats-server|nats-server-sync)
      local sync=""
      [ "$1" = nats-server-sync ] && sync="sync_interval: always"
      for i in 1 2 3; do
        cat >"$tmp/n$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:2642$i"
jetstream { store_dir: "$tmp/m$i", $sync }
cluster {
  name: b
  listen: "127.0.0.1:2662$i"
  routes: ["nats://127.0.0.1:26621", "nats://127.0.0.1:26622", "nats://127.0.0.1:26623"]
}
CONF
        "$NATS_SERVER" -c "$tmp/n$i.conf" >"$tmp/nats$i.log" 2>&1 & pids+=($!)
      done ;;
  esac
  sleep 6
}
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; pids=(); }
run() { # workload label args...  (SERVERS: which servers, default all three)
  local workload=$1 label=$2; shift 2
  for s in ${SERVERS:-berth nats-server nats-server-sync}; do
    start $s
    "$BERTH" bench $workload --nats-addr 127.0.0.1:26422 --replicas 3 --duration ${SECS}s \
      --warmup 2s "$@" -w json 2>/dev/null | S=$s L=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['S'], os.environ['L'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])"
    stop
  done
}
run js-publish "R3-async-4clients-window256-256B" --clients 4 --window 256 --val-size 256
run js-publish "R3-async-1client-window256-256B" --clients 1 --window 256 --val-size 256
run js-publish "R3-each-acked-1client-256B" --clients 1 --window 1 --val-size 256
run js-publish "R3-each-acked-16clients-256B" --clients 16 --window 1 --val-size 256
SERVERS="berth nats-server" run js-consume "R3-pull-explicit-ack-2clients-batch100-256B" \
  --clients 2 --batch 100 --messages ${MESSAGES:-300000} --val-size 256
