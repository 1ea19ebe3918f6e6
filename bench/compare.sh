#!/usr/bin/env bash
# Compares berth with etcd 3.4 on this machine, in one run: starts both (single node, fsync on,
# 127.0.0.1 only), runs every `berth bench` workload against each with the same bench binary,
# measures each server's memory after loading KEYS keys, and rewrites the generated section of
# BENCHMARKS.md (between the compare.sh markers) with the tables, the command, date and machine.
# Then it starts a 3-member etcd cluster and a 3-member berth cluster the same way (fresh data
# dirs, fsync on, 127.0.0.1 only), runs the CLUSTER_WORKLOADS against all three endpoints of
# each and rewrites the "3 members" section (between the compare.sh:cluster markers).
# For every berth node it also reads /metrics before and after each write workload and reports
# the Raft log's fsyncs (berth_disk_commit_duration_seconds, berth_write_batch_size).
#
# Usage: bench/compare.sh            (from anywhere; paths are relative to the repo root)
# Environment (defaults in brackets):
#   DURATION [10s]  measured time per workload      WARMUP [1s]  unmeasured time before it
#   KEYS [100000]   keys of VAL_SIZE bytes loaded for the memory comparison (1000000 works too)
#   VAL_SIZE [256]  value size everywhere           KEY_COUNT [10000]  keyspace of the workloads
#   WATCHERS [1000] watchers in the watch workload (10000 for the big case)
#   WATCH_RATE [100] writer puts/s in the watch workload
#   LEASES [10000]  leases in the keep-alive storm
#   ETCD [/usr/bin/etcd]  etcd binary              BUILD [1]  0 = use the berth binary as is
#   BERTH [target/release/berth]  berth binary (also runs the benchmarks); implies BUILD=0
#   BERTH_LABEL     how the report names that binary [release build of this repo's commit]
#   OUT [BENCHMARKS.md]   file to update           KEEP [0]   1 = keep logs and JSON in the temp dir
#   ONLY            space-separated workload ids to run (e.g. "put-1 watch"); memory always runs
#                   with NODES including 1
#   NODES [1 3]     which parts to run: 1 = single node (workloads and memory), 3 = 3-member
#                   clusters; each part rewrites only its own section of OUT
#   CLUSTER_WORKLOADS [put-1 put-64 range-l range-s txn mixed]  workload ids run on the clusters
#   FIRST [follower]  cluster endpoint order given to the bench: follower = followers first,
#                   leader last (so 1-conn workloads go through a follower, as 2 of 3 clients of
#                   a cluster do); leader = leader first; m0 = members in order m0,m1,m2
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
KEYS=${KEYS:-100000}
VAL_SIZE=${VAL_SIZE:-256}
KEY_COUNT=${KEY_COUNT:-10000}
WATCHERS=${WATCHERS:-1000}
WATCH_RATE=${WATCH_RATE:-100}
LEASES=${LEASES:-10000}
ETCD=${ETCD:-/usr/bin/etcd}
if [ -n "${BERTH:-}" ]; then BUILD=0; fi
BERTH=${BERTH:-target/release/berth}
BUILD=${BUILD:-1}
OUT=${OUT:-BENCHMARKS.md}
KEEP=${KEEP:-0}
ONLY=${ONLY:-}
NODES=${NODES:-1 3}
NODES=${NODES//,/ }
CLUSTER_WORKLOADS=${CLUSTER_WORKLOADS:-put-1 put-64 range-l range-s txn mixed}
FIRST=${FIRST:-follower}
case " $NODES " in *" 1 "* | *" 3 "*) ;; *) echo "NODES must list 1 and/or 3, not '$NODES'" >&2; exit 1 ;; esac
case $FIRST in follower | leader | m0) ;; *) echo "FIRST must be follower, leader or m0" >&2; exit 1 ;; esac
want_nodes() { [[ " $NODES " == *" $1 "* ]]; }
QUOTA=$((8 * 1024 * 1024 * 1024)) # 8 GiB: large enough that no run hits NOSPACE

work=$(mktemp -d /tmp/berth-compare.XXXXXX)
declare -A pid=()

# Whether process $1 is still running (not gone, not a zombie).
running() {
  kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}

# Stops every server still running: SIGTERM, then SIGKILL for any still there after 5 s.
cleanup() {
  local p i left
  for p in "${pid[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for i in $(seq 50); do
    left=0
    for p in "${pid[@]}"; do
      if running "$p"; then left=1; fi
    done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for p in "${pid[@]}"; do
    if running "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    wait "$p" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then
    echo "logs and results kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[compare] $*" >&2; }

[ -x "$ETCD" ] || { log "no etcd at $ETCD (apt-get install etcd-server)"; exit 1; }
if command -v jq >/dev/null; then
  json_get() { jq -r "$2 // empty" "$1"; }
elif command -v python3 >/dev/null; then
  # Dotted paths only (.a.b), which is all this script asks for.
  json_get() {
    python3 - "$1" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for part in sys.argv[2].strip(".").split("."):
    v = v.get(part) if isinstance(v, dict) else None
print("" if v is None else v)
PY
  }
else
  log "need jq or python3 to read the bench results"
  exit 1
fi

# A free TCP port on 127.0.0.1.
free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
    return
  fi
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# new_port: sets `port` to a free TCP port on 127.0.0.1 not handed out before in this run.
declare -A used_port=()
new_port() {
  while :; do
    port=$(free_port)
    if [ -z "${used_port[$port]:-}" ]; then break; fi
  done
  used_port[$port]=1
}

if [ "$BUILD" = 1 ]; then
  log "building berth (release)"
  cargo build --release --bin berth >&2
fi
# A private copy, so a rebuild during the run cannot swap the binary under it.
cp "$BERTH" "$work/berth"
B="$work/berth"

# A deployment is "berth" or "etcd" (single node; its one member has the same name) or "berth3"
# or "etcd3" (3 members, named DEPLOYMENT.m0 .. .m2). Per member: pid, client endpoint, HTTP
# port (berth only, for /metrics), data dir; its log is $work/MEMBER.log.
declare -A ep=() datadir=() hport=() members=()

kind_of() { echo "${1%3}"; }

# wait_healthy DEPLOYMENT SECONDS: until a linearizable read succeeds on every member's endpoint
# (so a cluster has elected a leader), or fails if a member exits or time runs out.
wait_healthy() {
  local dep=$1 secs=$2 m i eps=""
  for m in ${members[$dep]}; do eps+="${eps:+,}${ep[$m]}"; done
  for i in $(seq $((secs * 10))); do
    if "$B" endpoint health --endpoints "$eps" >/dev/null 2>&1; then
      log "$dep up at $eps"
      return 0
    fi
    for m in ${members[$dep]}; do running "${pid[$m]}" || break 2; done
    sleep 0.1
  done
  log "$dep did not start (or elect a leader); see its logs:"
  for m in ${members[$dep]}; do tail -20 "$work/$m.log" >&2; done
  return 1
}

# start_server NAME: starts berth or etcd (single node) on fresh ports with a fresh data dir.
start_server() {
  local name=$1 cport pport hp="" dir
  new_port; cport=$port
  new_port; pport=$port
  dir="$work/$name-data-$(date +%s%N)"
  case $name in
    berth)
      new_port; hp=$port
      "$B" server --data-dir "$dir" --quota-backend-bytes "$QUOTA" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-http-urls "http://127.0.0.1:$hp" --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" --listen-nats-urls "" --listen-peer-urls "http://127.0.0.1:$pport" \
        --log-level warn >>"$work/berth.log" 2>&1 &
      ;;
    etcd)
      "$ETCD" --name bench --data-dir "$dir" --quota-backend-bytes "$QUOTA" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "bench=http://127.0.0.1:$pport" >>"$work/etcd.log" 2>&1 &
      ;;
  esac
  pid[$name]=$!
  ep[$name]="127.0.0.1:$cport"
  hport[$name]=$hp
  datadir[$name]=$dir
  members[$name]=$name
  wait_healthy "$name" 10 || exit 1
}

# start_cluster NAME (berth3 or etcd3): starts three members at once on fresh ports with fresh
# data dirs, bootstrapped from the same --initial-cluster, and waits until all serve.
start_cluster() {
  local dep=$1 kind i m dir initial="" stamp
  local -a cp=() pp=() hp=()
  kind=$(kind_of "$dep")
  stamp=$(date +%s%N)
  for i in 0 1 2; do
    new_port; cp[i]=$port
    new_port; pp[i]=$port
    new_port; hp[i]=$port
    initial+="${initial:+,}m$i=http://127.0.0.1:${pp[i]}"
  done
  members[$dep]=""
  for i in 0 1 2; do
    m="$dep.m$i"
    dir="$work/$m-data-$stamp"
    case $kind in
      berth)
        "$B" server --name "m$i" --data-dir "$dir" --quota-backend-bytes "$QUOTA" \
          --listen-client-urls "http://127.0.0.1:${cp[i]}" --advertise-client-urls "http://127.0.0.1:${cp[i]}" \
          --listen-peer-urls "http://127.0.0.1:${pp[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pp[i]}" \
          --listen-http-urls "http://127.0.0.1:${hp[i]}" --listen-dns-addr "" --listen-gateway-urls "" --listen-nacos-urls "" --listen-nats-urls "" \
          --initial-cluster "$initial" --initial-cluster-token "bench-$stamp" --initial-cluster-state new \
          --log-level warn >>"$work/$m.log" 2>&1 &
        hport[$m]=${hp[i]}
        ;;
      etcd)
        "$ETCD" --name "m$i" --data-dir "$dir" --quota-backend-bytes "$QUOTA" \
          --listen-client-urls "http://127.0.0.1:${cp[i]}" --advertise-client-urls "http://127.0.0.1:${cp[i]}" \
          --listen-peer-urls "http://127.0.0.1:${pp[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pp[i]}" \
          --initial-cluster "$initial" --initial-cluster-token "bench-$stamp" --initial-cluster-state new \
          >>"$work/$m.log" 2>&1 &
        hport[$m]=""
        ;;
    esac
    pid[$m]=$!
    ep[$m]="127.0.0.1:${cp[i]}"
    datadir[$m]=$dir
    members[$dep]+="${members[$dep]:+ }$m"
  done
  wait_healthy "$dep" 60 || exit 1
}

start() { if [[ $1 == *3 ]]; then start_cluster "$1"; else start_server "$1"; fi; }

stop_server() {
  local dep=$1 m
  for m in ${members[$dep]}; do kill "${pid[$m]}" 2>/dev/null || true; done
  for m in ${members[$dep]}; do
    wait "${pid[$m]}" 2>/dev/null || true
    unset "pid[$m]"
  done
}

# alive DEPLOYMENT: every member still running.
alive() {
  local m
  for m in ${members[$1]}; do running "${pid[$m]}" || return 1; done
}

# leader_of DEPLOYMENT: the member that says it is the leader (empty if none answers so).
leader_of() {
  local m
  for m in ${members[$1]}; do
    if [ "$("$B" endpoint status --endpoints "${ep[$m]}" 2>/dev/null | awk -F', ' '{ print $5 }')" = true ]; then
      echo "$m"
      return
    fi
  done
}

# endpoints_of DEPLOYMENT LEADER: the members' client endpoints, comma-separated, in FIRST order.
endpoints_of() {
  local dep=$1 leader=$2 m eps=""
  for m in ${members[$dep]}; do
    if [ "$FIRST" = m0 ] || [ "$m" != "$leader" ]; then eps+="${eps:+,}${ep[$m]}"; fi
  done
  if [ "$FIRST" = m0 ] || [ -z "$leader" ]; then
    echo "$eps"
  elif [ "$FIRST" = leader ]; then
    echo "${ep[$leader]}${eps:+,}$eps"
  else
    echo "$eps${eps:+,}${ep[$leader]}"
  fi
}

# scrape DEPLOYMENT TAG: saves every berth member's /metrics as $work/metrics-TAG-MEMBER.prom.
scrape() {
  local m
  for m in ${members[$1]}; do
    [ -n "${hport[$m]}" ] || continue
    curl -s --max-time 5 "http://127.0.0.1:${hport[$m]}/metrics" >"$work/metrics-$2-$m.prom" 2>/dev/null || true
  done
}

# prom FILE METRIC: a sample's value (0 when missing).
prom() { awk -v k="$2" '$1 == k { v = $2 } END { print v + 0 }' "$1" 2>/dev/null || echo 0; }

# fsync_stats DEPLOYMENT BEFORE AFTER SECONDS MEMBERS...: over the given members (summed),
# prints "fsyncs/s per member|mean fsync ms|mean appends per fsync" between two scrapes.
fsync_stats() {
  local dep=$1 before=$2 after=$3 secs=$4 m n=0 dc=0 ds=0 bc=0 bs=0 f0 f1
  shift 4
  for m in "$@"; do
    f0="$work/metrics-$before-$m.prom"
    f1="$work/metrics-$after-$m.prom"
    [ -s "$f0" ] && [ -s "$f1" ] || continue
    n=$((n + 1))
    dc=$(awk -v a="$dc" -v x="$(prom "$f1" berth_disk_commit_duration_seconds_count)" -v y="$(prom "$f0" berth_disk_commit_duration_seconds_count)" 'BEGIN { print a + x - y }')
    ds=$(awk -v a="$ds" -v x="$(prom "$f1" berth_disk_commit_duration_seconds_sum)" -v y="$(prom "$f0" berth_disk_commit_duration_seconds_sum)" 'BEGIN { print a + x - y }')
    bc=$(awk -v a="$bc" -v x="$(prom "$f1" berth_write_batch_size_count)" -v y="$(prom "$f0" berth_write_batch_size_count)" 'BEGIN { print a + x - y }')
    bs=$(awk -v a="$bs" -v x="$(prom "$f1" berth_write_batch_size_sum)" -v y="$(prom "$f0" berth_write_batch_size_sum)" 'BEGIN { print a + x - y }')
  done
  awk -v n="$n" -v dc="$dc" -v ds="$ds" -v bc="$bc" -v bs="$bs" -v t="$secs" 'BEGIN {
    if (n == 0 || t <= 0) { print "–|–|–"; exit }
    printf "%.0f|%s|%s\n", dc / n / t, (dc > 0 ? sprintf("%.2f", 1000 * ds / dc) : "–"), (bc > 0 ? sprintf("%.1f", bs / bc) : "–")
  }'
}

# VmRSS / VmHWM of a server in MiB.
mem_mib() {
  awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/${pid[$1]}/status"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }
fmt_num() { awk -v a="$1" 'BEGIN { if (a == "") print "–"; else printf "%.0f", a }'; }
fmt_ms() { awk -v a="$1" 'BEGIN { if (a == "") print "–"; else printf "%.2f", a }'; }
loadavg() { awk '{ print $1 ", " $2 ", " $3 }' /proc/loadavg; }

# ---------------------------------------------------------------------------------------------
# Memory: fresh servers, RSS idle, then after loading KEYS keys of VAL_SIZE bytes.
# ---------------------------------------------------------------------------------------------
key_size=$((6 + ${#KEYS} + 2)) # "bench/" + digits of KEYS, with room to spare
declare -A rss_idle=() rss_loaded=() rss_anon=() rss_file=() hwm=() disk=() load_tput=()
load_single_start=""
if want_nodes 1; then
load_single_start=$(loadavg)
for s in berth etcd; do
  start_server "$s"
done
sleep 1
for s in berth etcd; do rss_idle[$s]=$(mem_mib "$s" VmRSS); done
for s in berth etcd; do
  log "memory: loading $KEYS keys into $s"
  out="$work/load-$s.json"
  if "$B" bench put --endpoints "${ep[$s]}" --clients 64 --conns 8 --key-count "$KEYS" \
    --total "$KEYS" --sequential-keys --key-size "$key_size" --val-size "$VAL_SIZE" \
    --command-timeout 30s -w json >"$out" 2>"$work/load-$s.err"; then
    load_tput[$s]=$(json_get "$out" .throughput)
  else
    log "loading $s failed: $(tail -1 "$work/load-$s.err")"
    load_tput[$s]=""
  fi
done
sleep 2 # let background work (compaction of the write batch, GC) settle
for s in berth etcd; do
  if alive "$s"; then
    rss_loaded[$s]=$(mem_mib "$s" VmRSS)
    rss_anon[$s]=$(mem_mib "$s" RssAnon)
    rss_file[$s]=$(mem_mib "$s" RssFile)
    hwm[$s]=$(mem_mib "$s" VmHWM)
  else
    rss_loaded[$s]=""
    rss_anon[$s]=""
    rss_file[$s]=""
    hwm[$s]=""
  fi
  disk[$s]=$(du -sm "${datadir[$s]}" | awk '{print $1}')
  stop_server "$s"
done
fi

# ---------------------------------------------------------------------------------------------
# Throughput and latency: fresh servers, each workload against berth then etcd.
# ---------------------------------------------------------------------------------------------
common="--duration $DURATION --warmup $WARMUP --key-count $KEY_COUNT --val-size $VAL_SIZE"
# id | description | bench arguments
workloads=(
  "put-1|put, 1 client / 1 conn|put --clients 1 --conns 1"
  "put-64|put, 64 clients / 8 conns|put --clients 64 --conns 8"
  "range-l|range linearizable, 64 clients / 8 conns|range --consistency l --clients 64 --conns 8"
  "range-s|range serializable, 64 clients / 8 conns|range --consistency s --clients 64 --conns 8"
  "txn|txn CAS (read rev + txn), 16 clients / 4 conns|txn --clients 16 --conns 4"
  "mixed|mixed 90% linearizable reads, 64 clients / 8 conns|mixed --read-ratio 0.9 --clients 64 --conns 8"
  "watch|watch: $WATCHERS watchers / 8 streams, 1 writer at $WATCH_RATE puts/s; event delay|watch --watchers $WATCHERS --conns 8 --rate $WATCH_RATE"
  "lease|lease keep-alive storm, $LEASES leases, 64 clients / 8 conns|lease-keepalive --leases $LEASES --clients 64 --conns 8"
)
# Workloads whose berth fsyncs are reported (the others write little or only in their prefill).
fsync_ids=" put-1 put-64 txn mixed "

# run_workloads BERTH ETCD IDS ROWS NOTES FSYNC: runs each workload (all if IDS is empty; ONLY
# filters further) against the two running deployments, berth's first, appending table rows to
# the arrays named ROWS, NOTES and FSYNC.
run_workloads() {
  local b=$1 e=$2 ids=$3 w id desc args s out leader after eps t0 t1 secs m l f
  local -a followers=()
  local -n rows_=$4 notes_=$5 fsync_=$6
  local -A tput=() p99=() errs=()
  for w in "${workloads[@]}"; do
    IFS='|' read -r id desc args <<<"$w"
    if [ -n "$ids" ] && [[ " $ids " != *" $id "* ]]; then continue; fi
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $id "* ]]; then continue; fi
    tput=() p99=() errs=()
    for s in "$b" "$e"; do
      out="$work/$id-$s.json"
      leader=$(leader_of "$s")
      eps=$(endpoints_of "$s" "$leader")
      log "$id against $s (load $(loadavg); leader ${leader:-?}): berth bench $args $common --endpoints $eps"
      scrape "$s" "$id-before"
      t0=$(date +%s.%N)
      # shellcheck disable=SC2086 # the argument strings are ours and split on purpose
      if "$B" bench $args $common --endpoints "$eps" -w json >"$out" 2>"$work/$id-$s.err"; then
        tput[$s]=$(json_get "$out" .throughput)
        p99[$s]=$(json_get "$out" .latency_ms.p99)
        errs[$s]=$(json_get "$out" .errors)
      else
        tput[$s]=""
        p99[$s]=""
        errs[$s]="failed"
        notes_+=("$id on $s: bench failed: $(tail -1 "$work/$id-$s.err")")
      fi
      t1=$(date +%s.%N)
      scrape "$s" "$id-after"
      if [ "$(kind_of "$s")" = berth ] && [[ $fsync_ids == *" $id "* ]]; then
        secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
        followers=()
        for m in ${members[$s]}; do [ "$m" = "$leader" ] || followers+=("$m"); done
        l=$(fsync_stats "$s" "$id-before" "$id-after" "$secs" "$leader")
        if [ ${#followers[@]} -gt 0 ]; then
          f=$(fsync_stats "$s" "$id-before" "$id-after" "$secs" "${followers[@]}")
          fsync_+=("| $desc | $(fmt_num "${tput[$s]}") | ${l//|/ | } | ${f//|/ | } |")
        else
          fsync_+=("| $desc | $(fmt_num "${tput[$s]}") | ${l//|/ | } |")
        fi
      fi
      if [ "${members[$s]}" != "$s" ]; then
        after=$(leader_of "$s")
        if [ "$after" != "$leader" ]; then
          notes_+=("$id on $s: the leader changed during the run (${leader:-none} before, ${after:-none} after)")
        fi
      fi
      if ! alive "$s"; then
        notes_+=("$id on $s: **a server exited during the run**; restarted with fresh data dirs")
        log "$s exited during $id; restarting it"
        for m in ${members[$s]}; do tail -5 "$work/$m.log" >&2 || true; done
        stop_server "$s"
        start "$s"
      fi
    done
    rows_+=("| $desc | \`$args\` | $(fmt_num "${tput[$b]}") | $(fmt_num "${tput[$e]}") | $(ratio "${tput[$b]}" "${tput[$e]}") | $(fmt_ms "${p99[$b]}") | $(fmt_ms "${p99[$e]}") | $(ratio "${p99[$b]}" "${p99[$e]}") | ${errs[$b]} / ${errs[$e]} |")
  done
}

rows=()
notes=()
fsync_rows=()
load_single_end=""
if want_nodes 1; then
  for s in berth etcd; do start_server "$s"; done
  run_workloads berth etcd "" rows notes fsync_rows
  for s in berth etcd; do stop_server "$s"; done
  load_single_end=$(loadavg)
fi

# ---------------------------------------------------------------------------------------------
# 3 members: the same workloads (CLUSTER_WORKLOADS) against a 3-member cluster of each.
# ---------------------------------------------------------------------------------------------
rows3=()
notes3=()
fsync_rows3=()
load_cluster_start=""
load_cluster_end=""
declare -A leaders3=()
if want_nodes 3; then
  load_cluster_start=$(loadavg)
  for s in berth3 etcd3; do start_cluster "$s"; done
  for s in berth3 etcd3; do leaders3[$s]=$(leader_of "$s"); done
  run_workloads berth3 etcd3 "$CLUSTER_WORKLOADS" rows3 notes3 fsync_rows3
  for s in berth3 etcd3; do stop_server "$s"; done
  load_cluster_end=$(loadavg)
fi

# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$repo" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
etcd_version=$("$ETCD" --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
cmdline="DURATION=$DURATION WARMUP=$WARMUP KEYS=$KEYS VAL_SIZE=$VAL_SIZE KEY_COUNT=$KEY_COUNT WATCHERS=$WATCHERS WATCH_RATE=$WATCH_RATE LEASES=$LEASES bench/compare.sh"
[ -n "$ONLY" ] && cmdline="ONLY=\"$ONLY\" $cmdline"
cmdline="NODES=\"$NODES\" $cmdline"
[ "$FIRST" != follower ] && cmdline="FIRST=$FIRST $cmdline"
machine="$(nproc) cores, $cpu, $mem_total RAM, $(uname -sr)"
versions="berth: ${BERTH_LABEL:-release build of commit $commit}; etcd: $etcd_version ($ETCD)"
data_fs=$(df -P /tmp | awk 'NR==2 { print $1 }')

# replace_section BEGIN END FILE AFTER: replaces the lines of OUT from the one starting with BEGIN
# to the one starting with END by FILE; without them, inserts FILE after the line starting with
# AFTER (or appends it when there is none).
replace_section() {
  local begin=$1 end=$2 file=$3 after=$4
  if [ -f "$OUT" ] && grep -q "^$begin" "$OUT"; then
    awk -v section="$file" -v b="$begin" -v e="$end" '
      index($0, b) == 1 { while ((getline line < section) > 0) print line; skip = 1; next }
      skip && index($0, e) == 1 { skip = 0; next }
      !skip { print }
    ' "$OUT" >"$work/out.md"
  elif [ -f "$OUT" ] && [ -n "$after" ] && grep -q "^$after" "$OUT"; then
    awk -v section="$file" -v a="$after" '
      { print }
      !done && index($0, a) == 1 { print ""; while ((getline line < section) > 0) print line; done = 1 }
    ' "$OUT" >"$work/out.md"
  else
    { [ -f "$OUT" ] && cat "$OUT" && echo; cat "$file"; } >"$work/out.md"
  fi
  cat "$work/out.md" >"$OUT"
}

fsync_note="berth_disk_commit_duration_seconds and berth_write_batch_size from each berth node's /metrics, read before and after the whole bench command (prefill and warmup included; txn and mixed prefill $KEY_COUNT keys first): fsyncs of the Raft log per second and per node, their mean duration, and the mean number of log appends (each one or more entries) made durable by one fsync."

if want_nodes 1; then
goal="not measured"
if [ -n "${rss_loaded[berth]:-}" ] && [ -n "${rss_loaded[etcd]:-}" ]; then
  if awk -v b="${rss_loaded[berth]}" -v e="${rss_loaded[etcd]}" 'BEGIN { exit !(b <= e / 2) }'; then
    goal="**met** (berth/etcd = $(ratio "${rss_loaded[berth]}" "${rss_loaded[etcd]}"))"
  else
    goal="**not met** (berth/etcd = $(ratio "${rss_loaded[berth]}" "${rss_loaded[etcd]}"))"
  fi
fi

section="$work/section.md"
{
  echo "<!-- compare.sh:begin (generated by bench/compare.sh; edits inside are overwritten) -->"
  echo "## Latest run"
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Command: \`$cmdline\`"
  echo "- Machine: $machine"
  echo "- $versions"
  echo "- Both single node, fsync on, data in $data_fs under /tmp, clients on the same machine over 127.0.0.1."
  echo "- Load average (1, 5, 15 min) when this part started: $load_single_start; when it ended: $load_single_end."
  echo
  echo "### Throughput and latency"
  echo
  echo "Each workload measured for $DURATION after $WARMUP of warmup, berth first then etcd, keyspace $KEY_COUNT keys, values $VAL_SIZE B."
  echo "Ratios are berth/etcd: above 1 is better for throughput, below 1 is better for p99."
  echo "The watch row's throughput is events delivered per second and its p99 the delay from the put's send to each watcher's receipt."
  echo
  echo "| workload | arguments | berth ops/s | etcd ops/s | ops/s berth/etcd | berth p99 ms | etcd p99 ms | p99 berth/etcd | errors berth / etcd |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
  if [ ${#notes[@]} -gt 0 ]; then
    echo
    for n in "${notes[@]}"; do echo "- $n"; done
  fi
  echo
  echo "### Memory after loading $KEYS keys of $VAL_SIZE B"
  echo
  echo "Fresh servers; keys loaded with \`berth bench put --clients 64 --conns 8 --key-count $KEYS --total $KEYS --sequential-keys --key-size $key_size --val-size $VAL_SIZE\`; RSS read from /proc/PID/status 2 s later."
  echo
  echo "| | berth | etcd | berth/etcd |"
  echo "|---|---:|---:|---:|"
  echo "| RSS idle, MiB | ${rss_idle[berth]:-–} | ${rss_idle[etcd]:-–} | $(ratio "${rss_idle[berth]}" "${rss_idle[etcd]}") |"
  echo "| RSS after load, MiB | ${rss_loaded[berth]:-–} | ${rss_loaded[etcd]:-–} | $(ratio "${rss_loaded[berth]}" "${rss_loaded[etcd]}") |"
  echo "| of which anonymous (heap, caches), MiB | ${rss_anon[berth]:-–} | ${rss_anon[etcd]:-–} | $(ratio "${rss_anon[berth]}" "${rss_anon[etcd]}") |"
  echo "| of which file-backed (mmap, binary), MiB | ${rss_file[berth]:-–} | ${rss_file[etcd]:-–} | $(ratio "${rss_file[berth]}" "${rss_file[etcd]}") |"
  echo "| peak RSS (VmHWM), MiB | ${hwm[berth]:-–} | ${hwm[etcd]:-–} | $(ratio "${hwm[berth]}" "${hwm[etcd]}") |"
  echo "| data dir on disk, MiB | ${disk[berth]:-–} | ${disk[etcd]:-–} | $(ratio "${disk[berth]}" "${disk[etcd]}") |"
  echo "| load throughput, puts/s | $(fmt_num "${load_tput[berth]}") | $(fmt_num "${load_tput[etcd]}") | $(ratio "${load_tput[berth]}" "${load_tput[etcd]}") |"
  echo
  echo "Memory goal (berth RSS after load ≤ half of etcd's): $goal."
  if [ ${#fsync_rows[@]} -gt 0 ]; then
    echo
    echo "### berth's Raft log fsyncs"
    echo
    echo "$fsync_note"
    echo
    echo "| workload | berth ops/s | fsyncs/s | mean fsync ms | appends per fsync |"
    echo "|---|---:|---:|---:|---:|"
    printf '%s\n' "${fsync_rows[@]}"
    echo
  fi
  echo "<!-- compare.sh:end -->"
} >"$section"
replace_section "<!-- compare.sh:begin" "<!-- compare.sh:end" "$section" ""
log "updated $OUT (single node)"
cat "$section"
fi

if want_nodes 3; then
section3="$work/section3.md"
{
  echo "<!-- compare.sh:cluster:begin (generated by bench/compare.sh; edits inside are overwritten) -->"
  echo "## Latest run, 3 members"
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Command: \`$cmdline\`"
  echo "- Machine: $machine"
  echo "- $versions"
  echo "- Three members of each (m0, m1, m2) on 127.0.0.1, started together from one \`--initial-cluster\`, fsync on, data in $data_fs under /tmp; all six processes and the bench share the machine's $(nproc) cores."
  echo "- Leaders when the clusters came up: berth ${leaders3[berth3]:-?}, etcd ${leaders3[etcd3]:-?} (asked again before each workload)."
  case $FIRST in
    follower) echo "- The bench gets all three endpoints, followers first and the leader last, and opens its connections round-robin over them: 1 conn goes to a follower, 4 conns to follower, follower, leader, follower, 8 conns 3 + 3 to the followers and 2 to the leader. The same for both." ;;
    leader) echo "- The bench gets all three endpoints, the leader first, and opens its connections round-robin over them: 1 conn goes to the leader. The same for both." ;;
    m0) echo "- The bench gets all three endpoints in member order (m0, m1, m2) and opens its connections round-robin over them, whichever is the leader." ;;
  esac
  echo "- Load average (1, 5, 15 min) when this part started: $load_cluster_start; when it ended: $load_cluster_end."
  echo
  echo "### Throughput and latency, 3 members"
  echo
  echo "Each workload measured for $DURATION after $WARMUP of warmup, berth's cluster first then etcd's, keyspace $KEY_COUNT keys, values $VAL_SIZE B."
  echo "Ratios are berth/etcd: above 1 is better for throughput, below 1 is better for p99."
  echo
  echo "| workload | arguments | berth ops/s | etcd ops/s | ops/s berth/etcd | berth p99 ms | etcd p99 ms | p99 berth/etcd | errors berth / etcd |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows3[@]}"
  if [ ${#notes3[@]} -gt 0 ]; then
    echo
    for n in "${notes3[@]}"; do echo "- $n"; done
  fi
  if [ ${#fsync_rows3[@]} -gt 0 ]; then
    echo
    echo "### berth's Raft log fsyncs, 3 members"
    echo
    echo "$fsync_note Followers: both together."
    echo
    echo "| workload | berth ops/s | leader fsyncs/s | leader mean fsync ms | leader appends per fsync | follower fsyncs/s | follower mean fsync ms | follower appends per fsync |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${fsync_rows3[@]}"
  fi
  echo
  echo "<!-- compare.sh:cluster:end -->"
} >"$section3"
replace_section "<!-- compare.sh:cluster:begin" "<!-- compare.sh:cluster:end" "$section3" "<!-- compare.sh:end"
log "updated $OUT (3 members)"
cat "$section3"
fi
