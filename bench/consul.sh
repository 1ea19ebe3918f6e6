#!/bin/bash
# The registry over Consul's HTTP API: registrations, TTL heartbeats, discovery reads and
# blocking watchers, on one node and on three members (every member on this machine), then
# RSS with 100,000 instances. Single node: server pinned to core 0, bench to core 1; three
# members share both cores with the bench. No Consul binary exists here: the figures are
# berth's own, 3-member ones also as ratios of the 1-node ones.
# Usage: BERTH=path/to/berth [SECS=10] [MEMBERS="1 3"] [PIN=1] bench/consul.sh
# (PIN=0: the single node and the bench share both cores, as the 3-member runs do.)
# Prints one line per run: label, ops/s, p50 ms, p99 ms [, extra].
set -u
BERTH=${BERTH:?path of the berth binary}; SECS=${SECS:-10}
tmp=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
start() { # members
  local n=$1 initial="" i
  for i in $(seq 0 $((n - 1))); do initial+="${initial:+,}m$i=http://127.0.0.1:$((25800 + i))"; done
  pids=()
  for i in $(seq 0 $((n - 1))); do
    local pin=()
    [ "$n" = 1 ] && [ "${PIN:-1}" = 1 ] && pin=(taskset -c 0)
    "${pin[@]}" "$BERTH" server --name m$i --data-dir "$tmp/m$i" \
      --listen-client-urls http://127.0.0.1:$((25790 + i)) \
      --advertise-client-urls http://127.0.0.1:$((25790 + i)) \
      --listen-peer-urls http://127.0.0.1:$((25800 + i)) \
      --initial-advertise-peer-urls http://127.0.0.1:$((25800 + i)) \
      --initial-cluster "$initial" --listen-http-urls http://127.0.0.1:$((25850 + i)) \
      --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" --listen-nats-urls "" \
      --log-level error & pids+=($!)
  done
  sleep 3
}
stop() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"/m*; }
bench() { # label members workload args...
  local label=$1 n=$2; shift 2
  start "$n"
  local pin=()
  [ "$n" = 1 ] && [ "${PIN:-1}" = 1 ] && pin=(taskset -c 1)
  "${pin[@]}" "$BERTH" bench "$@" --consul-addr 127.0.0.1:25850 -w json 2>/dev/null \
    | LABEL=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
extra=' '.join(f'{k}={d[k]}' for k in ('answered_per_change_min','other_wakeups') if k in d)
print(os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'], extra)" 2>&1 | tail -1
  stop
}
for n in ${MEMBERS:-1 3}; do
  bench "register/$n" $n consul-register --clients 256 --duration ${SECS}s
  bench "heartbeat/$n" $n consul-heartbeat --clients 64 --instances 1000 --duration ${SECS}s
  bench "discover/$n" $n consul-discover --clients 64 --instances 1000 --services 100 --duration ${SECS}s
  bench "discover-stale/$n" $n consul-discover --clients 64 --instances 1000 --services 100 --stale --duration ${SECS}s
  bench "watch-1k/$n" $n consul-watch --watchers 1000 --others 100 --changes 5
  bench "watch-10k-stale/$n" $n consul-watch --watchers 10000 --others 100 --changes 5 --stale
  start "$n"
  "$BERTH" bench consul-register --clients 256 --total 100000 --consul-addr 127.0.0.1:25850 -w json >/dev/null 2>&1
  sleep 2
  for p in "${pids[@]}"; do
    echo "rss-100k-instances/$n pid=$p $(awk '/VmRSS/ {print $2 " kB"}' /proc/$p/status)"
  done
  stop
done
