#!/usr/bin/env bash
# WebSocket fan-out benchmark: four scenarios, one markdown table row each.
#
#   SERVER=nchan  URL=http://127.0.0.1:8081 PIDS="$(shared/peers/start-nchan.sh memory)" ./bench.sh
#   SERVER=rtgate URL=http://127.0.0.1:8080 PIDS="$RTGATE_PID" ./bench.sh
#
# Start the server fresh: the idle scenario runs first so that its RSS delta is not
# inflated or hidden by memory the server kept from earlier runs.
# env: LOADGEN (binary), LG_CPU (0), SERVER_CPU (1; all threads of PIDS are pinned there),
#      DURATION (20), SUBS_IDLE (19900), HOLD (3), OUT (dir for raw JSON lines).
set -euo pipefail
SERVER=${SERVER:?SERVER=rtgate|nchan}
URL=${URL:?URL=http://127.0.0.1:PORT}
PIDS=${PIDS:?PIDS=\"pid pid\" of the server processes}
HERE=$(cd "$(dirname "$0")" && pwd)
LOADGEN=${LOADGEN:-$HERE/../target/release/examples/loadgen}
LG_CPU=${LG_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
DURATION=${DURATION:-20}
SUBS_IDLE=${SUBS_IDLE:-19900}
HOLD=${HOLD:-3}
OUT=${OUT:-/tmp/loadgen-bench-$SERVER}
command -v jq >/dev/null || { echo "bench.sh needs jq" >&2; exit 2; }
[[ -x $LOADGEN ]] || { echo "no loadgen binary at $LOADGEN" >&2; exit 2; }
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PID_CSV=$(echo "$PIDS" | tr ' ' ',' | sed 's/,,*/,/g; s/^,//; s/,$//')

# Pin every thread of the server to SERVER_CPU (the peers' start scripts already do).
for p in ${PID_CSV//,/ }; do
  taskset -apc "$SERVER_CPU" "$p" >/dev/null || { echo "cannot pin pid $p" >&2; exit 2; }
done

# run NAME ARGS... -> the loadgen's JSON line in $OUT/NAME.json (stderr in NAME.log)
run() {
  local name=$1; shift
  taskset -c "$LG_CPU" "$LOADGEN" --server "$SERVER" --url "$URL" --server-pid "$PID_CSV" \
    --json --label "$name" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" || true
  grep '^{' "$OUT/$name.out" | tail -1 >"$OUT/$name.json"
  [[ -s $OUT/$name.json ]] || { echo "scenario $name produced no JSON, see $OUT/$name.log" >&2; exit 1; }
  sleep 2
}

run s4-idle  --subscribers "$SUBS_IDLE" --idle --hold "$HOLD"
run s1-cpu   --subscribers 1000  --rate 100 --duration "$DURATION" --payload 128
run s2-p99   --subscribers 1000  --rate 10  --duration "$DURATION" --payload 128
run s3-p99   --subscribers 10000 --rate 2   --duration "$DURATION" --payload 128

echo "| server | scenario | headline | p50 ms | p99 ms | max ms | delivered / expected | lost / dup | server CPU | loadgen CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
row() { # file title headline-jq-expr
  jq -r --arg t "$2" "
    def f(n): if . == null then \"-\" else (. * pow(10;n) | round) / pow(10;n) | tostring end;
    \"| \(.server) | \(\$t) | $3 | \" +
    (if .mode == \"idle\" then \"- | - | - | \(.connected) / \(.subscribers) conns | - | - | \(.loadgen_connect_cpu_s|f(2)) s while connecting (\(.connect_s|f(1)) s) |\"
     else \"\(.lat_p50_ms|f(2)) | \(.lat_p99_ms|f(2)) | \(.lat_max_ms|f(2)) | \(.delivered) / \(.expected) | \(.lost) / \(.duplicated) | \(.server_cpu_s|f(2)) s (\(.server_cpu_pct|f(0))%) | \(.loadgen_cpu_s|f(2)) s (\(.loadgen_cpu_pct|f(0))% of a core) |\" end)
  " "$1"
}
row "$OUT/s1-cpu.json"  "1k subs x 100 msg/s x 128 B" '\(.server_cpu_s_per_m|f(2)) CPU-s / M deliveries'
row "$OUT/s2-p99.json"  "1k subs x 10 msg/s"           'p99 \(.lat_p99_ms|f(2)) ms'
row "$OUT/s3-p99.json"  "10k subs x 2 msg/s"           'p99 \(.lat_p99_ms|f(2)) ms'
row "$OUT/s4-idle.json" "$SUBS_IDLE idle conns"        '\((.server_rss_per_conn_bytes // null) | if . == null then "-" else (./1024*100|round/100|tostring) end) KiB RSS / conn'
