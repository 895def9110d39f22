#!/usr/bin/env bash
# Price-feed benchmark (issue 15): `latest` against `lossless` delivery.
#   (a) lossless, (b) latest: SUBS WebSocket readers on price.bench, a SLOW
#       fraction of them taking a frame every SLOW_MS ms, RATE msg/s over KEYS
#       keys published over HTTP keep-alive (examples/pricefeed.rs). The
#       embedded engine; a fresh rtgate per run pinned to CPU 1, the load
#       generator on CPU 0. Figures: deliveries/s, server CPU-s per 1M
#       deliveries, RSS, fast and slow readers' staleness, skipped,
#       reconnects, correctness (ids in order, skipped = messages not seen,
#       final value of every key).
#   (c) presence cost (only if GET /v1/presence/{topic} is not 404): Redis
#       engine, PRESENCE_N readers held PRESENCE_S s on a `presence = true`
#       topic, then the same on a topic without presence; Redis commands
#       (INFO commandstats) per connection per minute, the difference being
#       presence's.
#   cargo build --release --bin rtgate --example pricefeed && scripts/bench-pricefeed.sh
# env: SUBS (1000), RATE (1000), KEYS (50), SLOW (0.1), SLOW_MS (50), PAYLOAD (128),
#      SLOW_RCVBUF (0: the kernel's; SO_RCVBUF of the slow readers' sockets, bytes),
#      WARMUP (10), DURATION (30), DRAIN (20), OUTBOX (server's outbox_capacity,
#      default 1024), PRESENCE_N (SUBS), PRESENCE_S (60), MODES ("lossless latest"),
#      OUT (/tmp/bench-pricefeed), LG_CPU (0), SERVER_CPU (1), PROFILE (release),
#      NETNS_WMEM (unset; see below), SMOKE=1 (SUBS=50 RATE=100 WARMUP=2 DURATION=4 DRAIN=5 PRESENCE_S=5).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
if [[ ${SMOKE:-} == 1 ]]; then
  SUBS=${SUBS:-50} RATE=${RATE:-100} WARMUP=${WARMUP:-2} DURATION=${DURATION:-4} DRAIN=${DRAIN:-5}
  PRESENCE_S=${PRESENCE_S:-5}
fi
SUBS=${SUBS:-1000} RATE=${RATE:-1000} KEYS=${KEYS:-50} SLOW=${SLOW:-0.1} SLOW_MS=${SLOW_MS:-50}
PAYLOAD=${PAYLOAD:-128} WARMUP=${WARMUP:-10} DUR=${DURATION:-30} DRAIN=${DRAIN:-20}
SLOW_RCVBUF=${SLOW_RCVBUF:-0} PRESENCE_N=${PRESENCE_N:-$SUBS} PRESENCE_S=${PRESENCE_S:-60} MODES=${MODES:-lossless latest}
OUT=${OUT:-/tmp/bench-pricefeed} LG_CPU=${LG_CPU:-0} SCPU=${SERVER_CPU:-1}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
PF=$BIN/examples/pricefeed GW=$BIN/rtgate PORT=8095 RP=6397 URL=http://127.0.0.1:8095
for b in redis-server:redis-server redis-cli:redis-tools jq:jq curl:curl; do
  command -v "${b%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${b#*:}"; }
done
# NETNS_WMEM=BYTES: run everything in a private network namespace whose
# net.ipv4.tcp_wmem maximum is BYTES (the host's sysctls are not touched), so
# the server's kernel send buffers cannot absorb a slow reader's backlog.
if [[ -n ${NETNS_WMEM:-} && -z ${PF_IN_NETNS:-} ]]; then exec unshare -n env PF_IN_NETNS=1 "$PWD/scripts/bench-pricefeed.sh" "$@"; fi
if [[ -n ${PF_IN_NETNS:-} ]]; then
  ip link set lo up && sysctl -qw net.ipv4.tcp_wmem="4096 16384 $NETNS_WMEM"
  echo "in a private netns: net.ipv4.tcp_wmem = $(sysctl -n net.ipv4.tcp_wmem)" >&2
fi
[[ -x $PF && -x $GW ]] || {
  echo "build first: cargo build --$PROFILE --bin rtgate --example pricefeed" | sed 's/--debug //' >&2; exit 2; }
for p in $PORT $RP; do
  ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "port $p is in use" >&2; exit 2; }
done
mkdir -p "$OUT" && rm -f "$OUT"/*
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
             for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap stop_all EXIT

# config NAME ENGINE TOPICS-TOML: writes $OUT/NAME.toml
config() {
  local f=$OUT/$1.toml
  { [[ $2 == redis ]] && printf '[engine]\nkind = "redis"\n[redis]\nurl = "redis://127.0.0.1:%s/"\n' $RP
    printf '[abuse]\npublish_rate_per_connection = 0\nconnect_rate_per_ip = 0\nconnect_rate_global = 0\n'
    [[ -n ${OUTBOX:-} ]] && printf '[limits]\noutbox_capacity = %s\n' "$OUTBOX"
    printf '%b' "$3"; } >"$f"
  echo "$f"
}
GWPID=
gateway() {  # gateway CONFIG
  RUST_LOG=warn taskset -c "$SCPU" "$GW" --listen 127.0.0.1:$PORT --config "$1" >"$OUT/rtgate-$(basename "$1" .toml).log" 2>&1 &
  GWPID=$!; PIDS+=("$GWPID")
  for _ in $(seq 100); do curl -sf "$URL/readyz" >/dev/null && return; sleep 0.1; done
  echo "gateway not ready, see $OUT/rtgate-*.log" >&2; exit 1
}
redis() {
  taskset -c "$SCPU" redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do redis-cli -p $RP ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

for mode in $MODES; do
  echo "   load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  echo "== $mode: $SUBS readers ($SLOW slow, ${SLOW_MS} ms/frame), $RATE msg/s over $KEYS keys" >&2
  gateway "$(config "$mode" memory "[[topics]]\npattern = \"price.*\"\ndelivery = \"$mode\"\n")"
  # At the end of the window: bytes queued in the kernel, server side (Send-Q) and readers' side (Recv-Q).
  ss_hook="ss -Htn state established '( sport = :$PORT )' >$OUT/$mode.ss-server; ss -Htn state established '( dport = :$PORT )' >$OUT/$mode.ss-client"
  taskset -c "$LG_CPU" "$PF" --url $URL --topic price.bench --subscribers "$SUBS" --slow-fraction "$SLOW" \
    --slow-delay-ms "$SLOW_MS" --slow-rcvbuf "$SLOW_RCVBUF" --rate "$RATE" --keys "$KEYS" --payload "$PAYLOAD" \
    --warmup "$WARMUP" --duration "$DUR" --drain "$DRAIN" --server-pid "$GWPID" --label "$mode" \
    --on-done "$ss_hook" >"$OUT/$mode.json" 2>"$OUT/$mode.log" \
    || echo "   (pricefeed $mode exited non-zero, see $OUT/$mode.log)" >&2
  # Sockets holding more than 64 KiB, and the largest, in KiB (Send-Q: column 2, Recv-Q: column 1).
  kq() { awk -v c="$2" '{b=$c; s+=b; if (b>m) m=b; if (b>65536) n++} END {printf "{\"over_64k\":%d,\"max_kib\":%d,\"sum_kib\":%d}", n, m/1024, s/1024}' "$1"; }
  jq -c --argjson srv "$(kq "$OUT/$mode.ss-server" 2)" --argjson cli "$(kq "$OUT/$mode.ss-client" 1)" \
    '. + {kernel_queued: {server_send_q: $srv, reader_recv_q: $cli}}' "$OUT/$mode.json" >>"$OUT/results.jsonl" || true
  jq -c '{label: .label, deliveries_per_s, pub_rate: .publish_rate_achieved, cpu_busy_pct, lg_pct: .loadgen_cpu_pct, cpu_per_1m: .server_cpu_s_per_1m_deliveries, cpu_pct: .server_cpu_pct,
          rss: [.rss_mib_connected, .rss_mib_end, .rss_mib_max], drain_s,
          fast: (.fast | {p50: .stale_ms_p50, p99: .stale_ms_p99, max: .stale_ms_max, skipped, r1013: .reconnects_1013, ok: .final_values_ok, ord: .id_order_errors, mism: .skip_count_mismatches}),
          slow: (.slow_readers | {p50: .stale_ms_p50, p99: .stale_ms_p99, max: .stale_ms_max, skipped, r1013: .reconnects_1013, gaps, ok: .final_values_ok, ord: .id_order_errors, mism: .skip_count_mismatches})}' \
    <(tail -1 "$OUT/results.jsonl") >&2 || true
  jq -c '.kernel_queued' <(tail -1 "$OUT/results.jsonl") >&2 || true
  stop_all
done

# INFO commandstats snapshots (raw) and the calls between two of them: total
# and per command (INFO itself left out).
SNAP="redis-cli -p $RP info commandstats >"
calls() { tr -d '\r' <"$1" | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" {print $1, $3}' | sort; }
delta() {  # delta BEFORE AFTER -> {"total":N,"by_command":{...}}
  join -a2 -e0 -o 0,1.2,2.2 <(calls "$1") <(calls "$2") | awk '{d=$3-$2; if (d) printf "%s %d\n", substr($1, 9), d}' \
    | jq -Rn '[inputs | split(" ") | {(.[0]): (.[1]|tonumber)}] | add // {} | {total: (to_entries | map(.value) | add // 0), by_command: .}'
}
echo "== presence: Redis engine, $PRESENCE_N readers held ${PRESENCE_S} s" >&2
redis
gateway "$(config presence redis "[[topics]]\npattern = \"room.*\"\npresence = true\n")"
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/presence/room.bench")
if [[ $code == 404 ]]; then
  echo "   skipped: GET /v1/presence/room.bench answers 404 (presence is not in this build)" >&2
  echo '{"label":"presence","skipped":"GET /v1/presence answers 404"}' >>"$OUT/results.jsonl"
else
  for t in room.bench plain.bench; do
    sh -c "$SNAP $OUT/$t.0"
    taskset -c "$LG_CPU" "$PF" --url $URL --topic $t --subscribers "$PRESENCE_N" --slow-fraction 0 \
      --idle "$PRESENCE_S" --server-pid "$GWPID" --label "idle-$t" \
      --on-connected "$SNAP $OUT/$t.1" --on-done "$SNAP $OUT/$t.2" >"$OUT/idle-$t.json" 2>"$OUT/idle-$t.log" \
      || echo "   (pricefeed idle $t exited non-zero, see $OUT/idle-$t.log)" >&2
    sleep 1
  done
  per_min() { jq -n --argjson a "$1" --argjson b "$2" --argjson n "$PRESENCE_N" --argjson s "$PRESENCE_S" \
    '{held: ($a.total / $n / ($s/60)), baseline: ($b.total / $n / ($s/60)), presence: (($a.total - $b.total) / $n / ($s/60))}'; }
  P=$(delta "$OUT/room.bench.1" "$OUT/room.bench.2") B=$(delta "$OUT/plain.bench.1" "$OUT/plain.bench.2")
  PJ=$(delta "$OUT/room.bench.0" "$OUT/room.bench.1") BJ=$(delta "$OUT/plain.bench.0" "$OUT/plain.bench.1")
  jq -cn --argjson held "$P" --argjson base "$B" --argjson join "$PJ" --argjson bjoin "$BJ" \
    --argjson pm "$(per_min "$P" "$B")" --argjson n "$PRESENCE_N" --argjson s "$PRESENCE_S" \
    '{label: "presence", connections: $n, held_s: $s, ops_per_conn_per_min: $pm,
      connect_ops_per_conn: {presence: ($join.total / $n), baseline: ($bjoin.total / $n)},
      held_by_command: {presence: $held.by_command, baseline: $base.by_command}}' | tee -a "$OUT/results.jsonl" >&2
fi
stop_all
echo "results: $OUT/results.jsonl" >&2
