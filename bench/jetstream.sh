#!/bin/bash
# JetStream publishes and pull consumers, berth against nats-server on the same machine in the same run: each
# server alone, pinned to core 0, the bench (berth's, speaking the protocol itself) on core 1,
# a fresh data directory every run. berth fsyncs every batch before acknowledging it;
# nats-server runs with its default (sync every 2 minutes) and with `sync_interval: always`.
# Usage: BERTH=path/to/berth NATS_SERVER=path/to/nats-server [SECS=10] bench/jetstream.sh
# Prints one line per run: server, workload, acknowledged publishes (or acked consumed
# messages)/s, p50 ms, p99 ms.
set -u
BERTH=${BERTH:?path of the berth binary}; NATS_SERVER=${NATS_SERVER:?path of nats-server}
SECS=${SECS:-10}; PORT=24322
tmp=$(mktemp -d); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
start() { # server
  rm -rf "$tmp/data"; mkdir -p "$tmp/data"
  case $1 in
    berth) taskset -c 0 "$BERTH" server --data-dir "$tmp/data" \
        --listen-client-urls http://127.0.0.1:24890 --listen-peer-urls http://127.0.0.1:24900 \
        --listen-http-urls http://127.0.0.1:24950 --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" \
        --listen-nats-urls nats://127.0.0.1:$PORT --log-level error & pid=$! ;;
    nats-server) taskset -c 0 "$NATS_SERVER" -a 127.0.0.1 -p $PORT -js -sd "$tmp/data" \
        >"$tmp/nats.log" 2>&1 & pid=$! ;;
    nats-server-sync)
      printf 'listen: "127.0.0.1:%s"\njetstream { store_dir: "%s", sync_interval: always }\n' \
        $PORT "$tmp/data" >"$tmp/sync.conf"
      taskset -c 0 "$NATS_SERVER" -c "$tmp/sync.conf" >"$tmp/nats.log" 2>&1 & pid=$! ;;
  esac
  sleep 2
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; }
run() { # workload label args...  (SERVERS: which servers, default all three)
  local workload=$1 label=$2; shift 2
  for s in ${SERVERS:-berth nats-server nats-server-sync}; do
    start $s
    taskset -c 1 "$BERTH" bench $workload --nats-addr 127.0.0.1:$PORT --duration ${SECS}s \
      --warmup 1s "$@" -w json 2>/dev/null | S=$s L=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['S'], os.environ['L'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])"
    stop
  done
}
run js-publish "async-4clients-window256-256B" --clients 4 --window 256 --val-size 256
run js-publish "async-1client-window256-256B" --clients 1 --window 256 --val-size 256
run js-publish "each-acked-1client-256B" --clients 1 --window 1 --val-size 256
run js-publish "each-acked-16clients-256B" --clients 16 --window 1 --val-size 256
# Filling the stream at nats-server-sync's pace would take minutes: berth and the default.
SERVERS="berth nats-server" run js-consume "pull-explicit-ack-2clients-batch100-256B" --clients 2 --batch 100 \
  --messages ${MESSAGES:-1000000} --val-size 256
