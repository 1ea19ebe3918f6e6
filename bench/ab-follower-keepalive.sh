#!/bin/bash
# A/B of two berth builds: lease keep-alives sent to a FOLLOWER of a 3-member loopback cluster
# (each renewal must reach the leader, which alone runs lease timers). The bench is always the
# NEW build's; rounds alternate; 10 s each.
# Usage: NEW=path/to/berth OLD=path/to/berth [ROUNDS=3] bench/ab-follower-keepalive.sh [bench args...]
#   default bench args: --leases 10000 --clients 64 --conns 8
# Prints one line per run: label, renewals/s, p50 ms, p99 ms.
set -u
NEW=${NEW:?path of the new berth binary}; OLD=${OLD:?path of the old berth binary}
ROUNDS=${ROUNDS:-3}
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--leases 10000 --clients 64 --conns 8)
work=${TMPDIR:-/tmp}/berth-ab-cluster
run() { # label binary
  local label=$1 bin=$2 pids=() initial="" m
  rm -rf "$work"; mkdir -p "$work"
  for m in 0 1 2; do initial+="${initial:+,}m$m=http://127.0.0.1:2481$m"; done
  for m in 0 1 2; do
    "$bin" server --name "m$m" --data-dir "$work/m$m" \
      --listen-client-urls "http://127.0.0.1:2479$m" --advertise-client-urls "http://127.0.0.1:2479$m" \
      --listen-peer-urls "http://127.0.0.1:2481$m" --initial-advertise-peer-urls "http://127.0.0.1:2481$m" \
      --listen-http-urls "http://127.0.0.1:2485$m" --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" --listen-nats-urls "" --initial-cluster "$initial" \
      --initial-cluster-token ab --log-level error & pids+=($!)
  done
  sleep 3
  local follower=""
  for m in 0 1 2; do
    if curl -s "http://127.0.0.1:2485$m/metrics" | grep -q '^berth_raft_is_leader 0'; then follower=$m; break; fi
  done
  "$NEW" bench lease-keepalive "${args[@]}" --endpoints "127.0.0.1:2479$follower" --duration 10s -w json 2>/dev/null \
    | LABEL=$label python3 -c "import json,os,sys; d=json.load(sys.stdin); print(os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])" 2>&1 | tail -1
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null
}
for r in $(seq "$ROUNDS"); do
  run new "$NEW"
  run old "$OLD"
done
