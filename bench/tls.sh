#!/bin/bash
# TLS cost, berth against etcd on one node: each server plain and with TLS (server certificate
# from a test CA made with the openssl CLI; MTLS=1 also requires client certificates), the
# server pinned to core 0 and the bench (berth's) to core 1, 10 s per run, rounds alternating.
# Usage: BERTH=path/to/berth [ETCD=/usr/bin/etcd] [ROUNDS=2] [MTLS=0] bench/tls.sh <workload> [bench args...]
#   e.g. bench/tls.sh put --clients 64 --conns 8
#        bench/tls.sh range --consistency l --clients 64 --conns 8
# Prints one line per run: label, ops/s, p50 ms, p99 ms.
set -u
BERTH=${BERTH:?path of the berth binary}; ETCD=${ETCD:-/usr/bin/etcd}
ROUNDS=${ROUNDS:-2}; MTLS=${MTLS:-0}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
data=$tmp/data
# A CA, a server certificate for 127.0.0.1 and a client certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
    -keyout "$tmp/$who-key.pem" -out "$tmp/$who.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$tmp/$who.ext"
  openssl x509 -req -in "$tmp/$who.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$tmp/$who.ext" -out "$tmp/$who.pem" 2>/dev/null
done
tls_server=(--cert-file "$tmp/server.pem" --key-file "$tmp/server-key.pem")
tls_client=(--cacert "$tmp/ca.pem")
if [ "$MTLS" = 1 ]; then
  tls_server+=(--trusted-ca-file "$tmp/ca.pem" --client-cert-auth)
  tls_client+=(--cert "$tmp/client.pem" --key "$tmp/client-key.pem")
fi
run() { # label server(berth|etcd) scheme(http|https) workload...
  local label=$1 server=$2 scheme=$3; shift 3
  local flags=() client=()
  [ "$scheme" = https ] && flags=("${tls_server[@]}") && client=("${tls_client[@]}")
  rm -rf "$data"
  if [ "$server" = berth ]; then
    taskset -c 0 "$BERTH" server --data-dir "$data" --listen-client-urls $scheme://127.0.0.1:24790 \
      --advertise-client-urls $scheme://127.0.0.1:24790 --listen-peer-urls http://127.0.0.1:24800 \
      --listen-http-urls http://127.0.0.1:24850 --log-level error "${flags[@]}" & local pid=$!
  else
    taskset -c 0 "$ETCD" --data-dir "$data" --listen-client-urls $scheme://127.0.0.1:24790 \
      --advertise-client-urls $scheme://127.0.0.1:24790 --listen-peer-urls http://127.0.0.1:24800 \
      --initial-advertise-peer-urls http://127.0.0.1:24800 \
      --initial-cluster default=http://127.0.0.1:24800 --log-level error "${flags[@]}" \
      >/dev/null 2>&1 & local pid=$!
  fi
  sleep 2
  taskset -c 1 "$BERTH" bench "$@" --endpoints $scheme://127.0.0.1:24790 "${client[@]}" \
    --duration 10s -w json 2>/dev/null \
    | LABEL=$label python3 -c "import json,os,sys; d=json.load(sys.stdin); print(os.environ['LABEL'], round(d['throughput']), d['latency_ms']['p50'], d['latency_ms']['p99'])" 2>&1 | tail -1
  kill $pid; wait $pid 2>/dev/null
}
for r in $(seq "$ROUNDS"); do
  run berth-plain berth http "$@"
  run berth-tls berth https "$@"
  run etcd-plain etcd http "$@"
  run etcd-tls etcd https "$@"
done
