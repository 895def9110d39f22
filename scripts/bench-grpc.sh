#!/usr/bin/env bash
# gRPC benchmark: builds release, starts a fresh rtgate on 127.0.0.1:8094 pinned to
# CPU 1 (and the Nchan peer on :8083, also CPU 1, when it can be started); the load
# generator on CPU 0. 128-byte payloads, one topic.
#   grpc-1k        1,000 gRPC Subscribe streams x 100 msg/s, 10 HTTP/2 connections
#                  (deliveries/s, p50/p99, server CPU-s per million deliveries, lost/dup)
#   grpc-1k-c1     the same, all 1,000 streams on one HTTP/2 connection
#   grpc-1k-c1000  the same, one HTTP/2 connection per stream (as WebSocket has)
#   ws-1k          1,000 WebSocket subscribers x 100 msg/s, same rtgate
#   nchan-ws-1k    1,000 WebSocket subscribers x 100 msg/s on Nchan
#   pub-http, pub-ws, pub-grpc-publish, pub-grpc-connect: publish throughput (msgs/s)
#                  for DURATION_TP s, no subscribers
#   scripts/bench-grpc.sh
# env: DURATION (20), DURATION_TP (10), OUT (/tmp/bench-grpc), LG_CPU (0), SERVER_CPU (1),
#      NCHAN (1; 0 skips the peer), NCHAN_PORT (8083)
set -euo pipefail
cd "$(dirname "$0")/.."
LG=target/release/examples/loadgen GW=target/release/rtgate PEERS=../shared/peers
DUR=${DURATION:-20} DUR_TP=${DURATION_TP:-10} OUT=${OUT:-/tmp/bench-grpc}
LG_CPU=${LG_CPU:-0} SCPU=${SERVER_CPU:-1} NCHAN=${NCHAN:-1} NPORT=${NCHAN_PORT:-8083}
PORT=8094 URL=http://127.0.0.1:8094
for b in jq curl taskset; do command -v $b >/dev/null || { echo "needs $b" >&2; exit 2; }; done
cargo build --release --bin rtgate --example loadgen
! (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || { echo "port $PORT is in use" >&2; exit 2; }
mkdir -p "$OUT" && rm -rf "${OUT:?}"/*
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

GPID= NRUN=$OUT/nchan
cleanup() {
  [[ -z $GPID ]] || { kill "$GPID" 2>/dev/null || true; wait "$GPID" 2>/dev/null || true; }
  [[ ! -f $NRUN/pids ]] || "$PEERS/stop-peer.sh" "$NRUN" 2>/dev/null || true
}
trap cleanup EXIT
RUST_LOG=warn taskset -c "$SCPU" "$GW" --listen 127.0.0.1:$PORT >"$OUT/rtgate.log" 2>&1 &
GPID=$!
for _ in $(seq 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$URL/readyz" >/dev/null || { echo "rtgate not ready, see $OUT/rtgate.log" >&2; exit 1; }

# run NAME URL PIDS ARGS... -> $OUT/NAME.json (the loadgen's JSON line plus the 1-min load average)
run() {
  local n=$1 url=$2 pids=$3; shift 3
  echo "== $n: loadgen $*" >&2
  taskset -c "$LG_CPU" "$LG" --url "$url" --server-pid "$pids" --json --label "$n" "$@" \
    >"$OUT/$n.out" 2>"$OUT/$n.log" || echo "   ($n exited non-zero, see $OUT/$n.log)" >&2
  grep '^{' "$OUT/$n.out" | tail -1 | jq -c --arg l "$(cut -d' ' -f1 /proc/loadavg)" '. + {load1: $l}' >"$OUT/$n.json"
  [[ -s $OUT/$n.json ]] || { echo "$n produced no JSON, see $OUT/$n.log" >&2; exit 1; }
  sleep 2
}
FAN=(--subscribers 1000 --rate 100 --duration "$DUR" --payload 128)
run grpc-1k       $URL "$GPID" --transport grpc "${FAN[@]}"
run grpc-1k-c1    $URL "$GPID" --transport grpc --grpc-conns 1 "${FAN[@]}"
run grpc-1k-c1000 $URL "$GPID" --transport grpc --grpc-conns 1000 "${FAN[@]}"
run ws-1k         $URL "$GPID" --transport ws "${FAN[@]}"
run pub-http         $URL "$GPID" --throughput --via http --publishers 16 --duration "$DUR_TP"
run pub-ws           $URL "$GPID" --throughput --via ws --publishers 4 --inflight 32 --duration "$DUR_TP"
run pub-grpc-publish $URL "$GPID" --throughput --via grpc-publish --publishers 4 --inflight 32 --duration "$DUR_TP"
run pub-grpc-connect $URL "$GPID" --throughput --via grpc-connect --publishers 4 --inflight 32 --duration "$DUR_TP"
kill "$GPID"; wait "$GPID" 2>/dev/null || true; GPID=

NPIDS=
if [[ $NCHAN == 1 ]] && NPIDS=$(RUN_DIR=$NRUN PORT=$NPORT PEER_CPU=$SCPU "$PEERS/start-nchan.sh" memory 2>"$OUT/nchan-start.log"); then
  run nchan-ws-1k http://127.0.0.1:$NPORT "$(echo "$NPIDS" | tr ' ' ,)" --server nchan "${FAN[@]}"
  "$PEERS/stop-peer.sh" "$NRUN" 2>/dev/null || true
else
  echo "Nchan peer not started (NCHAN=$NCHAN; see $OUT/nchan-start.log): no side-by-side row" >&2
fi

echo
echo "| scenario | server | deliveries/s | server CPU-s per M deliveries | p50 / p99 / max ms | delivered / expected | lost / dup / closed early | server CPU | loadgen CPU | load avg |"
echo "|---|---|---|---|---|---|---|---|---|---|"
fan_row() { # NAME TITLE
  [[ -s $OUT/$1.json ]] || return 0
  jq -r --arg t "$2" '
    def f(n): if . == null then "-" else (. * pow(10;n) | round) / pow(10;n) | tostring end;
    "| \($t) | \(.server) | \(.deliveries_per_s|f(0)) | **\(.server_cpu_s_per_m|f(2))** | \(.lat_p50_ms|f(2)) / \(.lat_p99_ms|f(2)) / \(.lat_max_ms|f(2))"
    + " | \(.delivered) / \(.expected) | \(.lost) / \(.duplicated) / \(.closed_early)"
    + " | \(.server_cpu_s|f(2)) s (\(.server_cpu_pct|f(0))%) | \(.loadgen_cpu_pct|f(0))% (\(.loadgen_cpu_s_per_m|f(2)) s/M) | \(.load1) |"' "$OUT/$1.json"
}
fan_row grpc-1k       "1k gRPC Subscribe streams / 10 conns x 100 msg/s"
fan_row grpc-1k-c1    "1k gRPC Subscribe streams / 1 conn x 100 msg/s"
fan_row grpc-1k-c1000 "1k gRPC Subscribe streams / 1,000 conns x 100 msg/s"
fan_row ws-1k         "1k WS subscribers x 100 msg/s"
fan_row nchan-ws-1k   "1k WS subscribers x 100 msg/s"
echo
echo "| publish over | connections x in flight | accepted msg/s | errors | publish p50 / p99 ms | server CPU µs per msg | loadgen CPU | load avg |"
echo "|---|---|---|---|---|---|---|---|"
for n in pub-http pub-ws pub-grpc-publish pub-grpc-connect; do
  jq -r '
    def f(n): if . == null then "-" else (. * pow(10;n) | round) / pow(10;n) | tostring end;
    "| \(.via) | \(.publishers) x \(.inflight // 1) | **\(.accepted_per_s|f(0))** | \(.errors)"
    + " | \(.publish_lat_p50_ms|f(2)) / \(.publish_lat_p99_ms|f(2)) | \(.server_cpu_us_per_msg|f(1)) (\(.server_cpu_pct|f(0))% of a core)"
    + " | \(.loadgen_cpu_pct|f(0))% (\(.loadgen_cpu_us_per_msg|f(1)) µs/msg) | \(.load1) |"' "$OUT/$n.json"
done
grep -hiE 'error|warn|panic' "$OUT/rtgate.log" | sort | uniq -c | sort -rn | head -5 >&2 || true
