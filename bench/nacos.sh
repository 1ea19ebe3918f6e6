#!/bin/bash
# The configuration center and naming over Nacos's APIs, berth against r-nacos (a Rust Nacos
# server, `cargo install rnacos`) in the same run: each server alone, pinned to core 0, the
# bench pinned to core 1, fresh data each run. r-nacos does not fsync; berth does.
# Usage: BERTH=path/to/berth [RNACOS=rnacos] [SECS=10] [ROUNDS=1] bench/nacos.sh
# Prints one line per run: server, workload, ops/s, p50 ms, p99 ms [, extra]; then the
# berth / r-nacos ratios of throughput.
set -u
BERTH=${BERTH:?path of the berth binary}; RNACOS=${RNACOS:-rnacos}; SECS=${SECS:-10}
tmp=$(mktemp -d); pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
PORT=28848
start() { # server
  rm -rf "$tmp/data"; mkdir -p "$tmp/data"
  case $1 in
    berth)
      taskset -c 0 "$BERTH" server --data-dir "$tmp/data" \
        --listen-client-urls http://127.0.0.1:25790 --listen-peer-urls http://127.0.0.1:25800 \
        --listen-http-urls http://127.0.0.1:25850 --listen-dns-addr "" --listen-gateway-urls "" \
        --listen-nacos-urls http://127.0.0.1:$PORT --log-level error & pid=$! ;;
    rnacos)
      (cd "$tmp/data" && RNACOS_HTTP_PORT=$PORT RNACOS_HTTP_CONSOLE_PORT=0 \
        RNACOS_CONFIG_DB_DIR="$tmp/data/db" RUST_LOG=error taskset -c 0 "$RNACOS") \
        >"$tmp/rnacos.log" 2>&1 & pid=$! ;;
  esac
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/nacos/v1/cs/configs?dataId=x&group=y" && break
    sleep 0.1
  done
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""; }
declare -A tput
run() { # server label workload args...
  local server=$1 label=$2; shift 2
  start "$server"
  local line
  line=$(taskset -c 1 "$BERTH" bench "$@" --nacos-addr 127.0.0.1:$PORT -w json 2>/dev/null \
    | SERVER=$server LABEL=$label python3 -c "
import json,os,sys
d=json.load(sys.stdin)
extra=' '.join(f'{k}={d[k]}' for k in ('answered_per_change_min','errors') if k in d)
print(os.environ['SERVER'], os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'], extra)" 2>&1 | tail -1)
  echo "$line"
  tput[$server/$label]=$(echo "$line" | awk '{print $3}')
  stop
}
for round in $(seq ${ROUNDS:-1}); do
  for s in berth rnacos; do
    run $s publish nacos-publish --clients 64 --items 1000 --duration ${SECS}s
    run $s get nacos-get --clients 64 --items 1000 --duration ${SECS}s
    run $s register-grpc nacos-register --clients 64 --duration ${SECS}s
    run $s beat nacos-beat --clients 64 --instances 1000 --duration ${SECS}s
    run $s listen-10k nacos-listen --listeners 10000 --changes 5
  done
  for w in publish get register-grpc beat listen-10k; do
    b=${tput[berth/$w]:-0}; r=${tput[rnacos/$w]:-0}
    python3 -c "import sys; b,r=float(sys.argv[2] or 0),float(sys.argv[3] or 0); print(f'ratio {sys.argv[1]} berth/rnacos = {b/r:.2f}' if r else f'ratio {sys.argv[1]}: no r-nacos figure')" "$w" "$b" "$r"
  done
done
