#!/bin/bash
# The gateway on a 3-member cluster (all processes share the machine's cores, no pinning):
# 1. limit-count's cluster policy under load: wrk against all three members at once on a
#    route allowing COUNT requests in a window longer than the run, with policy "cluster"
#    and with "local"; how many were admitted against the count (cluster: at most COUNT
#    while one member leads; local: up to 3 × COUNT), and requests/s with a cluster limit
#    that does not run out against the same route without a limit (what counting costs).
# 2. Change-to-served latency: a new route written through member 1's Admin API, timed from
#    just before the write until members 2 and 3 serve it (each polled on a kept-alive
#    connection), CHANGES times.
# Usage: BERTH=path/to/berth [SECS=10] [COUNT=20000] [CHANGES=200] bench/gateway-cluster.sh
set -u
BERTH=${BERTH:?path of the berth binary}; SECS=${SECS:-10}; COUNT=${COUNT:-20000}
CHANGES=${CHANGES:-200}
UP=29200
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
. "$(dirname "$0")/upstream-nginx.sh"; upstream_conf "$tmp" "$UP"
nginx -p "$tmp" -c "$tmp/up.conf" -g 'daemon off;' & pids+=($!)
ic=m1=http://127.0.0.1:29211,m2=http://127.0.0.1:29212,m3=http://127.0.0.1:29213
for i in 1 2 3; do
  "$BERTH" server --name m$i --data-dir "$tmp/m$i" --initial-cluster $ic \
    --listen-client-urls http://127.0.0.1:2922$i --listen-peer-urls http://127.0.0.1:2921$i \
    --listen-http-urls http://127.0.0.1:2923$i --listen-gateway-urls http://127.0.0.1:2924$i \
    --listen-dns-addr "" --listen-nacos-urls "" --listen-nats-urls "" --log-level error & pids+=($!)
done
sleep 5
route() { # id json
  curl -sf -X PUT "127.0.0.1:29231/apisix/admin/routes/$1" -d "$2" >/dev/null || { echo "route $1 refused"; exit 1; }
}
node="{\"nodes\":{\"127.0.0.1:$UP\":1}}"
limit() { echo "{\"limit-count\":{\"count\":$1,\"time_window\":3600,\"policy\":\"$2\",\"rejected_code\":429}}"; }
route plain "{\"uri\":\"/plain\",\"upstream\":$node}"
route cl "{\"uri\":\"/cl\",\"upstream\":$node,\"plugins\":$(limit "$COUNT" cluster)}"
route lo "{\"uri\":\"/lo\",\"upstream\":$node,\"plugins\":$(limit "$COUNT" local)}"
route big "{\"uri\":\"/big\",\"upstream\":$node,\"plugins\":$(limit 1000000000 cluster)}"
sleep 1
load() { # path: wrk on the three members at once; prints requests/s and admitted (2xx)
  local w=()
  for i in 1 2 3; do
    wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:2924$i$1" > "$tmp/wrk$i.txt" 2>&1 & w+=($!)
  done
  wait "${w[@]}"
  python3 - "$tmp"/wrk1.txt "$tmp"/wrk2.txt "$tmp"/wrk3.txt <<'PY'
import re,sys
rps=0.0; ok=0
for f in sys.argv[1:]:
    t=open(f).read()
    n=int(re.search(r'(\d+) requests in',t).group(1))
    bad=re.search(r'Non-2xx or 3xx responses: (\d+)',t)
    rps+=float(re.search(r'Requests/sec:\s+([\d.]+)',t).group(1))
    ok+=n-(int(bad.group(1)) if bad else 0)
print(f"{rps:.0f} {ok}")
PY
}
echo "# limit-count across 3 members, wrk -c16 on each for ${SECS}s (route requests/s admitted bound)"
read -r rps ok < <(load /plain); echo "no-limit $rps $ok -"
read -r rps ok < <(load /big); echo "cluster-limit-not-reached $rps $ok -"
read -r rps ok < <(load /cl); echo "cluster-limit-$COUNT $rps $ok $COUNT"
read -r rps ok < <(load /lo); echo "local-limit-$COUNT $rps $ok $((3 * COUNT))"
echo "# change-to-served latency: written through member 1, served by members 2 and 3 (ms)"
python3 - "$CHANGES" <<'PY'
import http.client,json,sys,time
n=int(sys.argv[1]); node={"127.0.0.1:29200":1}
admin=http.client.HTTPConnection("127.0.0.1",29231)
gws=[http.client.HTTPConnection("127.0.0.1",p) for p in (29242,29243)]
lat=[[],[]]
for i in range(n):
    body=json.dumps({"uri":f"/lat{i}","upstream":{"nodes":node}})
    t0=time.perf_counter()
    admin.request("PUT",f"/apisix/admin/routes/lat{i}",body); r=admin.getresponse(); r.read()
    assert r.status in (200,201), r.status
    pending={0,1}
    while pending:
        for k in list(pending):
            gws[k].request("GET",f"/lat{i}"); g=gws[k].getresponse(); g.read()
            if g.status==200:
                lat[k].append((time.perf_counter()-t0)*1000); pending.discard(k)
    time.sleep(0.02)
def q(v,p): v=sorted(v); return v[min(len(v)-1,int(p*len(v)))]
for k,name in enumerate(("member2","member3")):
    v=lat[k]; print(f"{name} n={len(v)} p50={q(v,.5):.2f} p99={q(v,.99):.2f} max={max(v):.2f}")
PY
