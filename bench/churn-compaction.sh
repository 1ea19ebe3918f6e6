#!/bin/bash
# Auto-compaction under endless churn, berth against etcd with the same flags: 10k keys of
# 256 B overwritten for SECS seconds (16 clients / 4 conns), RSS and data size sampled every
# 15 s; then a defragment, and the size again.
# Usage: BERTH=path/to/berth [ETCD=etcd] [SECS=120] [MODE=periodic] [RETENTION=30s] bench/churn-compaction.sh
#   (MODE=revision RETENTION=100000 keeps the newest 100000 revisions instead)
set -u
BERTH=${BERTH:?path of the berth binary}; ETCD=${ETCD:-etcd}
SECS=${SECS:-120}; MODE=${MODE:-periodic}; RETENTION=${RETENTION:-30s}
work=${TMPDIR:-/tmp}/berth-churn
flags=(--auto-compaction-mode "$MODE" --auto-compaction-retention "$RETENTION")
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
size() { du -sk "$1" | awk '{printf "%.1f", $1/1024}'; }
measure() { # name pid datadir
  local name=$1 pid=$2 dir=$3 t=0
  taskset -c 1 "$BERTH" bench put --endpoints 127.0.0.1:24790 --key-count 10000 --val-size 256 \
    --clients 16 --conns 4 --duration "${SECS}s" -w json > "$work/$name.bench.json" 2>/dev/null &
  local bench=$!
  while kill -0 $bench 2>/dev/null; do
    sleep 15; t=$((t + 15))
    echo "$name t=${t}s rss_mib=$(rss "$pid") data_mib=$(size "$dir")"
  done
  wait $bench
  echo "$name puts/s=$(python3 -c "import json; print(round(json.load(open('$work/$name.bench.json'))['throughput']))")"
  "$BERTH" defrag --endpoints 127.0.0.1:24790 >/dev/null 2>&1
  sleep 1
  echo "$name after-defrag rss_mib=$(rss "$pid") data_mib=$(size "$dir")"
}
rm -rf "$work"; mkdir -p "$work"
taskset -c 0 "$BERTH" server --data-dir "$work/berth" --listen-client-urls http://127.0.0.1:24790 \
  --listen-peer-urls http://127.0.0.1:24800 --listen-http-urls http://127.0.0.1:24850 \
  --log-level error "${flags[@]}" & pid=$!
sleep 1.5; measure berth $pid "$work/berth"; kill $pid; wait $pid 2>/dev/null
taskset -c 0 "$ETCD" --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:24790 \
  --advertise-client-urls http://127.0.0.1:24790 --listen-peer-urls http://127.0.0.1:24800 \
  "${flags[@]}" > "$work/etcd.log" 2>&1 & pid=$!
sleep 1.5; measure etcd $pid "$work/etcd"; kill $pid; wait $pid 2>/dev/null
