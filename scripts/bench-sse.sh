#!/usr/bin/env bash
# SSE and long-polling benchmark: a fresh rtgate on 127.0.0.1:8093 pinned to CPU 1
# (restarted before the held-polls and the replay scenarios), the load generator on CPU 0.
#   sse-1k    1,000 SSE subscribers x 100 msg/s   (deliveries/s, p99, server CPU-s per M)
#   sse-10k   10,000 SSE subscribers x 2 msg/s    (p99)
#   poll-held 10,000 held long polls              (server RSS per held poll; fresh server)
#   poll-1k   1,000 poll subscribers x 10 msg/s   (p99)
#   replay    100,000 messages replayed to one SSE client (messages/s; fresh server,
#             RTGATE_HISTORY__MAX_LEN=200000)
#   cargo build --release --example loadgen --bin rtgate && scripts/bench-sse.sh
# env: DURATION (20), OUT (/tmp/bench-sse), LG_CPU (0), SERVER_CPU (1), HELD (10000),
#      REPLAY (100000)
set -euo pipefail
cd "$(dirname "$0")/.."
LG=target/release/examples/loadgen GW=target/release/rtgate
DUR=${DURATION:-20} OUT=${OUT:-/tmp/bench-sse} LG_CPU=${LG_CPU:-0} SCPU=${SERVER_CPU:-1}
HELD=${HELD:-10000} REPLAY=${REPLAY:-100000} PORT=8093 URL=http://127.0.0.1:8093
for b in jq curl taskset; do command -v $b >/dev/null || { echo "needs $b" >&2; exit 2; }; done
[[ -x $LG && -x $GW ]] || { echo "build first: cargo build --release --example loadgen --bin rtgate" >&2; exit 2; }
! (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || { echo "port $PORT is in use" >&2; exit 2; }
mkdir -p "$OUT" && rm -f "$OUT"/*
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

GPID=
stop_server() {
  [[ -n $GPID ]] || return 0
  kill "$GPID" 2>/dev/null || true; wait "$GPID" 2>/dev/null || true; GPID=
}
trap stop_server EXIT
# start_server NAME [VAR=VALUE...]: a fresh rtgate (the previous one stopped first)
start_server() {
  local name=$1; shift
  stop_server
  env RUST_LOG=warn "$@" taskset -c "$SCPU" "$GW" --listen 127.0.0.1:$PORT >"$OUT/rtgate-$name.log" 2>&1 &
  GPID=$!
  for _ in $(seq 100); do curl -sf "$URL/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "rtgate not ready, see $OUT/rtgate-$name.log" >&2; exit 1
}
# run NAME ARGS... -> $OUT/NAME.json (the loadgen's JSON line plus the 1-min load average)
run() {
  local n=$1; shift
  echo "== $n: loadgen $*" >&2
  taskset -c "$LG_CPU" "$LG" --server rtgate --url "$URL" --server-pid "$GPID" --json --label "$n" \
    "$@" >"$OUT/$n.out" 2>"$OUT/$n.log" || echo "   ($n exited non-zero, see $OUT/$n.log)" >&2
  grep '^{' "$OUT/$n.out" | tail -1 | jq -c --arg l "$(cut -d' ' -f1 /proc/loadavg)" '. + {load1: $l}' >"$OUT/$n.json"
  [[ -s $OUT/$n.json ]] || { echo "$n produced no JSON, see $OUT/$n.log" >&2; exit 1; }
  sleep 2
}

start_server a
run sse-1k  --transport sse --subscribers 1000  --rate 100 --duration "$DUR" --payload 128
run sse-10k --transport sse --subscribers 10000 --rate 2   --duration "$DUR" --payload 128
start_server b
run poll-held --transport poll --subscribers "$HELD" --idle --poll-timeout 60 --settle 2 --hold 3
run poll-1k   --transport poll --subscribers 1000 --rate 10 --duration "$DUR" --payload 128
start_server c RTGATE_HISTORY__MAX_LEN=200000
run replay --replay "$REPLAY" --publishers 16 --payload 128
stop_server

echo "| scenario | headline | p50 ms | p99 ms | delivered / expected | lost / dup / gaps | server CPU | loadgen CPU | load avg |"
echo "|---|---|---|---|---|---|---|---|---|"
row() { # NAME TITLE HEADLINE-JQ
  jq -r --arg t "$2" "
    def f(n): if . == null then \"-\" else (. * pow(10;n) | round) / pow(10;n) | tostring end;
    \"| \(\$t) | $3 | \" +
    (if .mode == \"idle\" then \"- | - | \(.held_polls) held / \(.subscribers) | - | - | \(.loadgen_connect_cpu_s|f(2)) s connecting (\(.connect_s|f(1)) s) |\"
     elif .mode == \"replay\" then \"- | - | \(.delivered) / \(.expected) | \(.lost) / \(.duplicated) / \(.gap_events + .server_gap_events) | \(.server_cpu_s|f(2)) s (\(.server_cpu_us_per_msg|f(1)) us/msg) | \(.loadgen_cpu_s|f(2)) s |\"
     else \"\(.lat_p50_ms|f(2)) | \(.lat_p99_ms|f(2)) | \(.delivered) / \(.expected) | \(.lost) / \(.duplicated) / \(.gap_events + .server_gap_events) | \(.server_cpu_s|f(2)) s (\(.server_cpu_pct|f(0))%) | \(.loadgen_cpu_s|f(2)) s (\(.loadgen_cpu_pct|f(0))%) |\" end)
    + \" \(.load1) |\"
  " "$OUT/$1.json"
}
row sse-1k    "1k SSE subs x 100 msg/s x 128 B" '\(.deliveries_per_s|f(0)) deliveries/s, \(.server_cpu_s_per_m|f(2)) CPU-s / M'
row sse-10k   "10k SSE subs x 2 msg/s"          'p99 \(.lat_p99_ms|f(2)) ms'
row poll-held "$HELD held long polls"           '\((.server_rss_per_conn_bytes // null) | if . == null then "-" else (./1024*100|round/100|tostring) end) KiB RSS / held poll'
row poll-1k   "1k poll subs x 10 msg/s"         'p99 \(.lat_p99_ms|f(2)) ms'
row replay    "replay $REPLAY msgs to 1 SSE client" '\(.replay_msgs_per_s|f(0)) msg/s (published at \(.publish_per_s|f(0))/s)'
