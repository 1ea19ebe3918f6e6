#!/bin/bash
# Core NATS with berth's auth on against auth off, the same build, alternating rounds: the
# cost of checking each publish and subscription against the user's grants. The server alone
# on core 0, the bench on core 1; with auth on, the bench logs in as a user whose role may
# read and write every subject (a grant from "" on, in the messaging keyspace).
# Usage: BERTH=path/to/berth [SECS=10] [ROUNDS=2] bench/nats-auth.sh
# Prints one line per run: label, deliveries/s, p50 ms, p99 ms.
set -u
BERTH=${BERTH:?path of the berth binary}; SECS=${SECS:-10}; ROUNDS=${ROUNDS:-2}
tmp=$(mktemp -d); pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
EP=127.0.0.1:24790
start() {
  rm -rf "$tmp/d"
  taskset -c 0 "$BERTH" server --data-dir "$tmp/d" --listen-client-urls "http://$EP" \
    --listen-peer-urls http://127.0.0.1:24800 --listen-http-urls http://127.0.0.1:24850 \
    --listen-nats-urls nats://127.0.0.1:24222 --listen-gateway-urls "" --listen-nacos-urls "" \
    --listen-dns-addr "" --log-level error & pid=$!
  sleep 2
}
auth_on() {
  ETCDCTL_API=3 etcdctl --endpoints "$EP" user add root:rootpw >/dev/null
  ETCDCTL_API=3 etcdctl --endpoints "$EP" auth enable >/dev/null 2>&1
  local as=(--endpoints "$EP" --user root:rootpw)
  ETCDCTL_API=3 etcdctl "${as[@]}" user add bench:benchpw >/dev/null
  ETCDCTL_API=3 etcdctl "${as[@]}" role add app >/dev/null
  ETCDCTL_API=3 etcdctl "${as[@]}" user grant-role bench app >/dev/null
  "$BERTH" "${as[@]}" --http-addr 127.0.0.1:24850 role grant app readwrite "" --from-key \
    --keyspace messaging >/dev/null
}
run() { # label bench-args...
  local label=$1; shift
  taskset -c 1 "$BERTH" bench nats-pubsub --nats-addr 127.0.0.1:24222 --duration "${SECS}s" \
    --warmup 1s --val-size 256 "$@" -w json 2>/dev/null | LABEL=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])"
}
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    for shape in "1x1:--clients 1 --subscribers 1" "4x4:--clients 4 --subscribers 4"; do
      start
      user=()
      if [ "$mode" = on ]; then auth_on; user=(--user bench:benchpw); fi
      # shellcheck disable=SC2086
      run "auth-$mode/${shape%%:*}/round-$round" ${shape#*:} "${user[@]}"
      kill "$pid"; wait "$pid" 2>/dev/null; pid=""
    done
  done
done
