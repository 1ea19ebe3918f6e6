#!/bin/bash
# Reload under load: 1,000 open WebSockets through the gateway and steady HTTP load (wrk,
# closed loop) for SECS, first with no changes, then while a route and its upstream change
# RATE times a second through APISIX's Admin API (each change moves the WebSockets' route to
# another upstream node). Reports the WebSockets opened, closed and failed echoes, and wrk's
# requests/s, p99 and non-2xx for each run. Then nginx (Debian's) in the same place, with
# `nginx -s reload` NGINX_RATE times a second (worker_shutdown_timeout 10s, as ingress-nginx
# sets) as the contrast. berth and nginx on core 1; the upstreams, wrk and the WebSocket
# holders on core 0.
# berth's RSS is sampled every 10 s of each berth run (first sample, last, largest).
# SOAK=1 runs only berth under churn (the issue's 10-minute soak: SOAK=1 SECS=600), and
# prints every RSS sample. BERTH_FLAGS: more flags for berth (e.g. auto-compaction).
# Usage: BERTH=path/to/berth [SECS=60] [RATE=100] [NGINX_RATE=10] [WS=1000] [SOAK=0] bench/gateway-reload.sh
set -u
BERTH=${BERTH:?path of the berth binary}; SECS=${SECS:-60}; RATE=${RATE:-100}
NGINX_RATE=${NGINX_RATE:-10}; WS=${WS:-1000}; SOAK=${SOAK:-0}
UP=29100; WSA=29101; WSB=29102; GW=29180; ADMIN=29150; NGX=29103
here=$(cd "$(dirname "$0")" && pwd); tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
. "$(dirname "$0")/upstream-nginx.sh"; upstream_conf "$tmp" "$UP"
cat > "$tmp/proxy.conf" <<CONF
worker_processes 1; pid $tmp/proxy.pid; error_log $tmp/proxy.err; worker_shutdown_timeout 10s;
events { worker_connections 10240; }
http { access_log off; keepalive_requests 1000000;
  upstream u { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  upstream ws { server 127.0.0.1:$WSA; }
  server { listen 127.0.0.1:$NGX;
    location /ws { proxy_pass http://ws; proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 3600s; }
    location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
taskset -c 0 nginx -p "$tmp" -c "$tmp/up.conf" -g 'daemon off;' & pids+=($!)
taskset -c 0 python3 "$here/gateway_reload.py" upstream $WSA & pids+=($!)
taskset -c 0 python3 "$here/gateway_reload.py" upstream $WSB & pids+=($!)
taskset -c 1 "$BERTH" server --data-dir "$tmp/data" --listen-client-urls http://127.0.0.1:29179 \
  --listen-peer-urls http://127.0.0.1:29178 --listen-http-urls http://127.0.0.1:$ADMIN \
  --listen-dns-addr "" --listen-nacos-urls "" --listen-nats-urls "" \
  --listen-gateway-urls http://127.0.0.1:$GW --log-level error ${BERTH_FLAGS:-} & pids+=($!)
sleep 3
put() { curl -sf -X PUT "127.0.0.1:$ADMIN/apisix/admin/$1" -d "$2" >/dev/null || { echo "PUT $1 failed"; exit 1; }; }
put upstreams/ws "{\"nodes\":{\"127.0.0.1:$WSA\":1}}"
put routes/ws '{"uri":"/ws","upstream_id":"ws","enable_websocket":true}'
put routes/http "{\"uri\":\"/\",\"upstream\":{\"nodes\":{\"127.0.0.1:$UP\":1}}}"
run() { # label gateway churn...
  local label=$1 gw=$2; shift 2
  taskset -c 0 python3 "$here/gateway_reload.py" hold "$gw" "$WS" "$SECS" "$@" > "$tmp/hold.json" &
  local holder=$! sampler=
  : > "$tmp/rss.txt"
  if [ "${label#berth}" != "$label" ]; then
    ( while sleep 10; do ps -o rss= -p "${pids[3]}" >> "$tmp/rss.txt" || break; done ) & sampler=$!
  fi
  sleep 4
  taskset -c 0 wrk -t1 -c16 -d"$((SECS - 4))s" --latency "http://$gw/" > "$tmp/wrk.txt" 2>&1
  wait $holder
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  if [ -s "$tmp/rss.txt" ]; then
    awk 'NR==1{f=$1} {l=$1; if ($1>m) m=$1} END {printf "%s rss_kib first %d last %d max %d samples %d\n", L, f, l, m, NR}' L="$label" "$tmp/rss.txt"
    [ "$SOAK" = 1 ] && echo "$label rss_kib every 10 s: $(tr '\n' ' ' < "$tmp/rss.txt")"
  fi
  L="$label" python3 - "$tmp/wrk.txt" "$tmp/hold.json" <<'PY'
import json,os,re,sys
t=open(sys.argv[1]).read(); h=json.load(open(sys.argv[2]))
rps=re.search(r'Requests/sec:\s+([\d.]+)',t); p99=re.search(r'99%\s+(\S+)',t)
bad=re.search(r'Non-2xx or 3xx responses: (\d+)',t); err=re.search(r'Socket errors: (.*)',t)
print(os.environ['L'], 'rps', rps and rps.group(1), 'p99', p99 and p99.group(1),
      'non2xx', bad.group(1) if bad else 0, 'errors', err.group(1) if err else 'none', 'ws', json.dumps(h))
PY
}
[ "$SOAK" = 1 ] || run "berth-no-changes" 127.0.0.1:$GW none
run "berth-${RATE}-changes/s" 127.0.0.1:$GW berth 127.0.0.1:$ADMIN "$RATE" 127.0.0.1:$WSA 127.0.0.1:$WSB
[ "$SOAK" = 1 ] && exit 0
kill "${pids[3]}"; wait "${pids[3]}" 2>/dev/null
taskset -c 1 nginx -p "$tmp" -c "$tmp/proxy.conf" -g 'daemon off;' & pids+=($!)
sleep 2
run "nginx-no-reloads" 127.0.0.1:$NGX none
run "nginx-${NGINX_RATE}-reloads/s" 127.0.0.1:$NGX nginx "$tmp" "$tmp/proxy.conf" "$NGINX_RATE"
