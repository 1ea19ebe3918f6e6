#!/bin/bash
# JetStream start-up and memory with a large stream, berth against nats-server on the same
# machine in the same run: each server alone fills stream BENCH with FILL_SECS of 256-byte
# publishes (berth's js-publish, 4 clients × window 256), is killed with SIGKILL and started
# again (start-up = until `berth stream info BENCH` answers with the messages), then stopped
# cleanly (SIGTERM) and started again. RSS is read from /proc once the stream answers.
# Needs about 8 GB free in TMPDIR for 25 s of filling.
# Usage: BERTH=path/to/berth NATS_SERVER=path/to/nats-server [FILL_SECS=25] [SERVERS="berth nats-server"]
#   bench/jetstream-startup.sh
# Prints one line per start: server, how it was stopped before, messages, seconds to answer,
# RSS in kB when it answered and SETTLE_SECS (20) later.
set -u
BERTH=${BERTH:?path of the berth binary}; NATS_SERVER=${NATS_SERVER:?path of nats-server}
FILL_SECS=${FILL_SECS:-25}; PORT=24323
tmp=$(mktemp -d); pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
start() { # server
  case $1 in
    berth) "$BERTH" server --data-dir "$tmp/data" \
        --listen-client-urls http://127.0.0.1:24891 --listen-peer-urls http://127.0.0.1:24901 \
        --listen-http-urls http://127.0.0.1:24951 --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" \
        --listen-nats-urls nats://127.0.0.1:$PORT --log-level error & pid=$! ;;
    nats-server) "$NATS_SERVER" -a 127.0.0.1 -p $PORT -js -sd "$tmp/data" \
        >"$tmp/nats.log" 2>&1 & pid=$! ;;
  esac
}
messages() { "$BERTH" --nats-url nats://127.0.0.1:$PORT stream info BENCH -w json 2>/dev/null |
  python3 -c "import json,sys; print(json.load(sys.stdin)['state']['messages'])" 2>/dev/null; }
timed_start() { # server, how it was stopped
  local t0 t1 n
  t0=$(date +%s.%N); start $1
  until n=$(messages) && [ -n "$n" ] && [ "$n" -gt 0 ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  local rss; rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  # The allocator gives back what loading used for a while after: RSS again once settled.
  sleep ${SETTLE_SECS:-20}
  echo "$1 $2 $n $(echo "$t1 - $t0" | bc) $rss $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
}
for s in ${SERVERS:-berth nats-server}; do
  rm -rf "$tmp/data"; mkdir -p "$tmp/data"
  start $s; sleep 2
  "$BERTH" bench js-publish --nats-addr 127.0.0.1:$PORT --duration ${FILL_SECS}s \
    --clients 4 --window 256 --val-size 256 >/dev/null 2>&1
  kill -9 $pid; wait $pid 2>/dev/null; pid=
  timed_start $s kill-9
  kill $pid; wait $pid 2>/dev/null; pid=
  timed_start $s clean-stop
  kill -9 $pid; wait $pid 2>/dev/null; pid=
done
