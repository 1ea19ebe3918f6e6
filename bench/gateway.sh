#!/bin/bash
# The gateway against nginx (Debian's) on the same machine in the same run, in front of the
# same upstream (an nginx worker answering a fixed 1 KiB body, keep-alive): the proxy under
# test alone on core 1 (berth: the whole process, so one tokio worker; nginx: one worker),
# the upstream and the load tool on core 0. nginx proxies as its docs say to for keep-alive
# upstreams (`keepalive`, `proxy_http_version 1.1`, `Connection ""`), access logs off in both.
# HTTP/1.1 with wrk (closed loop, -t1, each connection count REPS times, berth and nginx
# alternating), then HTTP/2 (h2c) with h2load, then gRPC (berth's own etcd API as the upstream,
# `berth bench range` as the load) through berth and through nginx's grpc_pass. Between them,
# berth alone with jwt-auth and limit-count on a route, against the same without.
# Usage: BERTH=path/to/berth [SECS=10] [REPS=3] [CONNS="16 64 256"] bench/gateway.sh
# Prints one line per run: proxy, connections, requests/s, p50, p99, non-2xx/errors.
set -u
BERTH=${BERTH:?path of the berth binary}; SECS=${SECS:-10}; REPS=${REPS:-3}
CONNS=${CONNS:-16 64 256}
UP=29000; NGX=29001; NGX_H2=29002; NGX_GRPC=29003; GW=29080; ADMIN=29500; ETCD=29379
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
. "$(dirname "$0")/upstream-nginx.sh"; upstream_conf "$tmp" "$UP"
cat > "$tmp/proxy.conf" <<CONF
worker_processes 1; pid $tmp/proxy.pid; error_log $tmp/proxy.err;
events { worker_connections 10240; }
http { access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  upstream u { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  upstream g { server 127.0.0.1:$ETCD; keepalive 128; }
  server { listen 127.0.0.1:$NGX; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$NGX_H2 http2; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$NGX_GRPC http2; location / { grpc_pass grpc://g; } } }
CONF
taskset -c 0 nginx -p "$tmp" -c "$tmp/up.conf" -g 'daemon off;' & pids+=($!)
taskset -c 1 nginx -p "$tmp" -c "$tmp/proxy.conf" -g 'daemon off;' & pids+=($!)
taskset -c 1 "$BERTH" server --data-dir "$tmp/data" --listen-client-urls http://127.0.0.1:$ETCD \
  --listen-peer-urls http://127.0.0.1:29380 --listen-http-urls http://127.0.0.1:$ADMIN \
  --listen-dns-addr "" --listen-nacos-urls "" --listen-nats-urls "" \
  --listen-gateway-urls http://127.0.0.1:$GW --log-level error & pids+=($!)
sleep 3
curl -sf -X PUT "127.0.0.1:$ADMIN/apisix/admin/routes/http" \
  -d "{\"uri\":\"/\",\"upstream\":{\"nodes\":{\"127.0.0.1:$UP\":1}}}" >/dev/null || exit 1
curl -sf -X PUT "127.0.0.1:$ADMIN/apisix/admin/routes/grpc" \
  -d "{\"uri\":\"/etcdserverpb.KV/*\",\"upstream\":{\"scheme\":\"grpc\",\"nodes\":{\"127.0.0.1:$ETCD\":1}}}" >/dev/null || exit 1
wrk_run() { # label port conns [path [header]]
  local extra=(); [ -n "${5:-}" ] && extra=(-H "$5")
  taskset -c 0 wrk -t1 -c"$3" -d"${SECS}s" --latency "${extra[@]}" "http://127.0.0.1:$2${4:-/}" 2>&1 |
    L="$1" C="$3" python3 -c "
import os,re,sys
t=sys.stdin.read()
rps=re.search(r'Requests/sec:\s+([\d.]+)',t); p50=re.search(r'50%\s+(\S+)',t); p99=re.search(r'99%\s+(\S+)',t)
bad=re.search(r'Non-2xx or 3xx responses: (\d+)',t); err=re.search(r'Socket errors: (.*)',t)
print(os.environ['L'], os.environ['C'], rps and rps.group(1), p50 and p50.group(1), p99 and p99.group(1), (bad.group(1) if bad else 0), (err.group(1) if err else ''))"
}
echo "# HTTP/1.1 keep-alive, 1 KiB body (proxy conns rps p50 p99 non2xx errors)"
for c in $CONNS; do
  wrk_run direct $UP "$c"
  for r in $(seq "$REPS"); do
    if [ $((r % 2)) = 1 ]; then wrk_run nginx $NGX "$c"; wrk_run berth $GW "$c"
    else wrk_run berth $GW "$c"; wrk_run nginx $NGX "$c"; fi
  done
done
echo "# berth plain against berth with jwt-auth (HS256) and limit-count on the route (conns rps p50 p99 non2xx errors)"
curl -sf -X PUT "127.0.0.1:$ADMIN/apisix/admin/consumers/bench" \
  -d '{"username":"bench","plugins":{"jwt-auth":{"key":"bench","secret":"bench-secret"}}}' >/dev/null || exit 1
curl -sf -X PUT "127.0.0.1:$ADMIN/apisix/admin/routes/auth" \
  -d "{\"uri\":\"/auth/*\",\"upstream\":{\"nodes\":{\"127.0.0.1:$UP\":1}},\"plugins\":{\"jwt-auth\":{},\"limit-count\":{\"count\":1000000000,\"time_window\":60}}}" >/dev/null || exit 1
token=$(python3 -c "
import base64,hashlib,hmac,json,time
b=lambda d: base64.urlsafe_b64encode(d).rstrip(b'=')
h=b(json.dumps({'alg':'HS256','typ':'JWT'}).encode()); p=b(json.dumps({'key':'bench','exp':int(time.time())+3600}).encode())
print((h+b'.'+p+b'.'+b(hmac.new(b'bench-secret',h+b'.'+p,hashlib.sha256).digest())).decode())")
for c in $CONNS; do
  for r in $(seq "$REPS"); do
    wrk_run berth-plain $GW "$c"
    wrk_run berth-jwt+limit $GW "$c" /auth/x "Authorization: Bearer $token"
  done
done
echo "# HTTP/2 (h2c), h2load -c 16 -m 10 (proxy rps p50 p99 failed)"
h2_run() { # label port
  taskset -c 0 h2load -c 16 -m 10 -D "$SECS" --warm-up-time 1 "http://127.0.0.1:$2/" 2>&1 |
    L="$1" python3 -c "
import os,re,sys
t=sys.stdin.read()
rps=re.search(r'finished in [\d.]+\w+, ([\d.]+) req/s',t); st=re.search(r'requests: .*?(\d+) failed',t)
lat=re.search(r'time for request:\s+(\S+)\s+(\S+)\s+(\S+)',t)
print(os.environ['L'], rps and rps.group(1), 'min/max/mean', lat and lat.groups(), 'failed', st and st.group(1))"
}
for r in $(seq "$REPS"); do h2_run nginx $NGX_H2; h2_run berth $GW; done
echo "# gRPC: berth bench range (etcd API) direct, through berth, through nginx grpc_pass"
grpc_run() { # label endpoint
  taskset -c 0 "$BERTH" bench range --endpoints "$2" --conns 4 --clients 64 --duration "${SECS}s" \
    -w json 2>/dev/null | L="$1" python3 -c "
import json,os,sys
d=json.load(sys.stdin)
print(os.environ['L'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'], d.get('errors',0))"
}
grpc_run direct 127.0.0.1:$ETCD
for r in $(seq "$REPS"); do grpc_run nginx 127.0.0.1:$NGX_GRPC; grpc_run berth 127.0.0.1:$GW; done
