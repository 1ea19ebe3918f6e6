#!/bin/bash
# 10,000 blocked Consul watchers, one change: berth against the machine's floor (the bench
# crate's `blocking_floor` example, which answers the same requests with fixed bytes written
# straight to each socket), alternating, pinned (server on core 0, bench on core 1) and not.
# Usage: BERTH=path/to/berth FLOOR=path/to/blocking_floor [WATCHERS=10000] [REPS=2] bench/consul-watch-floor.sh
# Prints: label, p50 ms, p99 ms, answered per change (min), other services' wakeups.
set -u
BERTH=${BERTH:?path of the berth binary}; FLOOR=${FLOOR:?path of the blocking_floor example}
WATCHERS=${WATCHERS:-10000}; REPS=${REPS:-2}
tmp=$(mktemp -d); pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
serve() { # what pin
  local pin=(); [ "$2" = 1 ] && pin=(taskset -c 0)
  if [ "$1" = berth ]; then
    "${pin[@]}" "$BERTH" server --name m0 --data-dir "$tmp/m0" \
      --listen-client-urls http://127.0.0.1:25790 --advertise-client-urls http://127.0.0.1:25790 \
      --listen-peer-urls http://127.0.0.1:25800 --initial-advertise-peer-urls http://127.0.0.1:25800 \
      --initial-cluster m0=http://127.0.0.1:25800 --listen-http-urls http://127.0.0.1:25850 \
      --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" --listen-nats-urls "" \
      --log-level error & pid=$!
  else
    "${pin[@]}" "$FLOOR" 127.0.0.1:25850 2>"$tmp/floor.log" & pid=$!
  fi
  sleep 3
}
for rep in $(seq 1 "$REPS"); do
  for pin in 1 0; do
    for what in berth floor; do
      serve "$what" "$pin"
      bpin=(); [ "$pin" = 1 ] && bpin=(taskset -c 1)
      "${bpin[@]}" "$BERTH" bench consul-watch --watchers "$WATCHERS" --others 100 --changes 5 --stale \
        --consul-addr 127.0.0.1:25850 -w json 2>/dev/null | LABEL="$what/pin=$pin/rep=$rep" python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['LABEL'], d['latency_ms']['p50'], d['latency_ms']['p99'], d.get('answered_per_change_min'), d.get('other_wakeups'))"
      [ "$what" = floor ] && sed 's/^/  /' "$tmp/floor.log"
      kill "$pid"; wait "$pid" 2>/dev/null; pid=""; rm -rf "$tmp/m0"
    done
  done
done
