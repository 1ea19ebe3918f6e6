#!/usr/bin/env bash
# Compares berth with etcd 3.4 on this machine, in one run: starts both (single node, fsync on,
# 127.0.0.1 only), runs every `berth bench` workload against each with the same bench binary,
# measures each server's memory after loading KEYS keys, and rewrites the generated section of
# BENCHMARKS.md (between the compare.sh markers) with the tables, the command, date and machine.
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
#
# TODO(cluster): compare 3-node clusters (berth vs etcd) once berth clustering lands; today both
# run as single nodes. Three etcd members and three berth nodes on 127.0.0.1 ports, bench
# --endpoints listing all three, same table.
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
QUOTA=$((8 * 1024 * 1024 * 1024)) # 8 GiB: large enough that no run hits NOSPACE

work=$(mktemp -d /tmp/berth-compare.XXXXXX)
declare -A pid=()

cleanup() {
  local p
  for p in "${pid[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pid[@]}"; do
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

if [ "$BUILD" = 1 ]; then
  log "building berth (release)"
  cargo build --release --bin berth >&2
fi
# A private copy, so a rebuild during the run cannot swap the binary under it.
cp "$BERTH" "$work/berth"
B="$work/berth"

declare -A ep=() datadir=()

# start_server NAME: starts berth or etcd on fresh ports with a fresh data dir.
start_server() {
  local name=$1 cport pport hport dir
  cport=$(free_port)
  pport=$(free_port)
  dir="$work/$name-data-$(date +%s%N)"
  case $name in
    berth)
      hport=$(free_port)
      "$B" server --data-dir "$dir" --quota-backend-bytes "$QUOTA" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-http-urls "http://127.0.0.1:$hport" --listen-peer-urls "http://127.0.0.1:$pport" \
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
  datadir[$name]=$dir
  local i
  for i in $(seq 100); do
    if "$B" endpoint health --endpoints "${ep[$name]}" >/dev/null 2>&1; then
      log "$name up at ${ep[$name]} (pid ${pid[$name]})"
      return
    fi
    kill -0 "${pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  log "$name did not start; see its log:"
  tail -20 "$work/$name.log" >&2
  exit 1
}

stop_server() {
  local name=$1
  kill "${pid[$name]}" 2>/dev/null || true
  wait "${pid[$name]}" 2>/dev/null || true
  unset "pid[$name]"
}

alive() { kill -0 "${pid[$1]}" 2>/dev/null; }

# VmRSS / VmHWM of a server in MiB.
mem_mib() {
  awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/${pid[$1]}/status"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }
fmt_num() { awk -v a="$1" 'BEGIN { if (a == "") print "–"; else printf "%.0f", a }'; }
fmt_ms() { awk -v a="$1" 'BEGIN { if (a == "") print "–"; else printf "%.2f", a }'; }

# ---------------------------------------------------------------------------------------------
# Memory: fresh servers, RSS idle, then after loading KEYS keys of VAL_SIZE bytes.
# ---------------------------------------------------------------------------------------------
key_size=$((6 + ${#KEYS} + 2)) # "bench/" + digits of KEYS, with room to spare
declare -A rss_idle=() rss_loaded=() rss_anon=() rss_file=() hwm=() disk=() load_tput=()
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

for s in berth etcd; do start_server "$s"; done
rows=()
notes=()
for w in "${workloads[@]}"; do
  IFS='|' read -r id desc args <<<"$w"
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $id "* ]]; then continue; fi
  declare -A tput=() p99=() errs=()
  for s in berth etcd; do
    out="$work/$id-$s.json"
    log "$id against $s: berth bench $args $common"
    # shellcheck disable=SC2086 # the argument strings are ours and split on purpose
    if "$B" bench $args $common --endpoints "${ep[$s]}" -w json >"$out" 2>"$work/$id-$s.err"; then
      tput[$s]=$(json_get "$out" .throughput)
      p99[$s]=$(json_get "$out" .latency_ms.p99)
      errs[$s]=$(json_get "$out" .errors)
    else
      tput[$s]=""
      p99[$s]=""
      errs[$s]="failed"
      notes+=("$id on $s: bench failed: $(tail -1 "$work/$id-$s.err")")
    fi
    if ! alive "$s"; then
      notes+=("$id on $s: **the server exited during the run**; restarted with a fresh data dir")
      log "$s exited during $id; restarting it"
      tail -5 "$work/$s.log" >&2 || true
      unset "pid[$s]"
      start_server "$s"
    fi
  done
  rows+=("| $desc | \`$args\` | $(fmt_num "${tput[berth]}") | $(fmt_num "${tput[etcd]}") | $(ratio "${tput[berth]}" "${tput[etcd]}") | $(fmt_ms "${p99[berth]}") | $(fmt_ms "${p99[etcd]}") | $(ratio "${p99[berth]}" "${p99[etcd]}") | ${errs[berth]} / ${errs[etcd]} |")
  unset tput p99 errs
done
for s in berth etcd; do stop_server "$s"; done

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

goal="not measured"
if [ -n "${rss_loaded[berth]}" ] && [ -n "${rss_loaded[etcd]}" ]; then
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
  echo "- Machine: $(nproc) cores, $cpu, $mem_total RAM, $(uname -sr)"
  echo "- berth: ${BERTH_LABEL:-release build of commit $commit}; etcd: $etcd_version ($ETCD)"
  echo "- Both single node, fsync on, data in $(df -P /tmp | awk 'NR==2 { print $1 }') under /tmp, clients on the same machine over 127.0.0.1."
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
  echo "<!-- compare.sh:end -->"
} >"$section"

# Replace the generated section of OUT (or append it).
if [ -f "$OUT" ] && grep -q '^<!-- compare.sh:begin' "$OUT"; then
  awk -v section="$section" '
    /^<!-- compare.sh:begin/ { while ((getline line < section) > 0) print line; skip = 1; next }
    /^<!-- compare.sh:end/ { skip = 0; next }
    !skip { print }
  ' "$OUT" >"$work/out.md"
  cat "$work/out.md" >"$OUT"
else
  { [ -f "$OUT" ] && cat "$OUT" && echo; cat "$section"; } >"$work/out.md"
  cat "$work/out.md" >"$OUT"
fi
log "updated $OUT"
cat "$section"
