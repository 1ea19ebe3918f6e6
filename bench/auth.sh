#!/bin/bash
# Auth cost, berth against etcd on one node: each server with auth off, then on (root, and a
# `bench` user whose role grants readwrite on the bench's key prefix: every request carries the
# token of one login and is checked against the user's permissions; bcrypt cost 10 on both).
# The server is pinned to core 0 and the bench (berth's) to core 1, 10 s per run, rounds
# alternating.
# Usage: BERTH=path/to/berth [ETCD=/usr/bin/etcd] [ROUNDS=2] bench/auth.sh <workload> [bench args...]
#   e.g. bench/auth.sh put --clients 64 --conns 8
#        bench/auth.sh range --consistency l --clients 64 --conns 8
# Prints one line per run: label, ops/s, p50 ms, p99 ms.
set -u
BERTH=${BERTH:?path of the berth binary}; ETCD=${ETCD:-/usr/bin/etcd}
ROUNDS=${ROUNDS:-2}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
data=$tmp/data
ep=127.0.0.1:24790
ctl() { ETCDCTL_API=3 etcdctl --endpoints $ep "$@" >/dev/null; }
run() { # label server(berth|etcd) auth(off|on) workload...
  local label=$1 server=$2 auth=$3; shift 3
  rm -rf "$data"
  if [ "$server" = berth ]; then
    taskset -c 0 "$BERTH" server --data-dir "$data" --listen-client-urls http://$ep \
      --listen-peer-urls http://127.0.0.1:24800 --listen-http-urls http://127.0.0.1:24850 \
      --log-level error & local pid=$!
  else
    taskset -c 0 "$ETCD" --data-dir "$data" --listen-client-urls http://$ep \
      --advertise-client-urls http://$ep --listen-peer-urls http://127.0.0.1:24800 \
      --initial-advertise-peer-urls http://127.0.0.1:24800 \
      --initial-cluster default=http://127.0.0.1:24800 --log-level error >/dev/null 2>&1 & local pid=$!
  fi
  sleep 2
  local creds=()
  if [ "$auth" = on ]; then
    ctl user add root:rootpw && ctl user grant-role root root && ctl user add bench:benchpw \
      && ctl role add bench && ctl role grant-permission bench --prefix readwrite bench/ \
      && ctl user grant-role bench bench && ctl auth enable
    creds=(--user bench:benchpw)
  fi
  taskset -c 1 "$BERTH" bench "$@" --endpoints http://$ep "${creds[@]}" \
    --duration 10s -w json 2>/dev/null \
    | LABEL=$label python3 -c "import json,os,sys; d=json.load(sys.stdin); print(os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])" 2>&1 | tail -1
  kill $pid; wait $pid 2>/dev/null
}
for r in $(seq "$ROUNDS"); do
  run berth-plain berth off "$@"
  run berth-auth berth on "$@"
  run etcd-plain etcd off "$@"
  run etcd-auth etcd on "$@"
done
