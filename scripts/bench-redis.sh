#!/usr/bin/env bash
# Redis engine benchmark: one redis-server (:6399) and two rtgate processes
# (A :8091, B :8092) on it, all pinned to CPU 1; the load generator on CPU 0.
#   (a) HTTP publish throughput   (b) WebSocket publish throughput
#   (c) 1,000 subscribers on B, 100 msg/s published to A (latency, lost/dup)
#   (d) Redis commands per publish: 10,000 HTTP publishes to A over 1,000 topics,
#       one subscriber per topic on B (INFO commandstats before/after)
# Every scenario snapshots INFO commandstats, so every row gets Redis calls/publish.
#   cargo build --release --bin rtgate --example loadgen && scripts/bench-redis.sh
# env: DURATION (10), OUT (/tmp/bench-redis), LG_CPU (0), SERVER_CPU (1)
set -euo pipefail
cd "$(dirname "$0")/.."
LG=target/release/examples/loadgen GW=target/release/rtgate
DUR=${DURATION:-10} OUT=${OUT:-/tmp/bench-redis} LG_CPU=${LG_CPU:-0} SCPU=${SERVER_CPU:-1}
A=http://127.0.0.1:8091 B=http://127.0.0.1:8092 RP=6399
for b in redis-server:redis-server redis-cli:redis-tools jq:jq curl:curl; do
  command -v "${b%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${b#*:}"; }
done
[[ -x $LG && -x $GW ]] || { echo "build first: cargo build --release --bin rtgate --example loadgen" >&2; exit 2; }
for p in $RP 8091 8092; do
  ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "port $p is in use" >&2; exit 2; }
done
mkdir -p "$OUT" && rm -f "$OUT"/*
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STARTED=()
stop() { for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
         for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done; }
trap stop EXIT
taskset -c "$SCPU" redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no \
  >"$OUT/redis.log" 2>&1 &
RPID=$!; STARTED+=("$RPID")
for port in 8091 8092; do
  RUST_LOG=warn RTGATE_ENGINE__KIND=redis RTGATE_REDIS__URL=redis://127.0.0.1:$RP/ \
    taskset -c "$SCPU" "$GW" --listen 127.0.0.1:$port >"$OUT/rtgate-$port.log" 2>&1 &
  STARTED+=("$!")
done
APID=${STARTED[1]} BPID=${STARTED[2]}
for u in $A $B; do  # ready = Redis reachable from both processes
  for _ in $(seq 100); do curl -sf "$u/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "$u/readyz" >/dev/null || { echo "$u not ready, see $OUT/rtgate-*.log" >&2; exit 1; }
done

# run NAME ARGS... -> $OUT/NAME.json (last JSON line), NAME.cs0/NAME.cs1 (commandstats)
run() {
  local n=$1; shift
  echo "== $n: loadgen $*" >&2
  taskset -c "$LG_CPU" "$LG" --json --label "$n" --server-pid "$APID,$BPID,$RPID" \
    --before-publish "redis-cli -p $RP INFO commandstats >$OUT/$n.cs0" \
    --after-publish "redis-cli -p $RP INFO commandstats >$OUT/$n.cs1" \
    "$@" >"$OUT/$n.out" 2>"$OUT/$n.log" || echo "   ($n exited non-zero, see $OUT/$n.log)" >&2
  grep '^{' "$OUT/$n.out" | tail -1 >"$OUT/$n.json"
  [[ -s $OUT/$n.json ]] || { echo "$n produced no JSON, see $OUT/$n.log" >&2; exit 1; }
  sleep 1
}
run a-http --throughput --via http --publishers 16 --duration "$DUR" --url $A
run b-ws   --throughput --via ws --publishers 4 --inflight 32 --duration "$DUR" --url $A
run c-fan  --url $A --sub-url $B --subscribers 1000 --rate 100 --duration 20 --payload 128
run d-cmds --throughput --via http --publishers 16 --count 10000 --topics 1000 \
  --subscribers 1000 --url $A --sub-url $B

# calls NAME -> "total T (client C: cmd x, ...; in script: cmd x, ...)" per publish.
# Redis counts the commands a Lua script runs in commandstats too; the publish
# script's commands are listed apart (client = round trips issued by rtgate).
calls() {
  local n; n=$(jq '.accepted // .published' "$OUT/$1.json")
  awk -F'[:,=]' -v n="$n" '
    /^cmdstat_/ { c = substr($1, 9); if (FNR == NR) b[c] = $3; else { d = $3 - b[c]; if (c != "info" && d > 0) v[c] = d } }
    END { split("xadd xlen xrange xtrim xrevrange set get exists xinfo", s, " "); for (i in s) lua[s[i]] = 1
      for (c in v) { t += v[c]; x = sprintf("%s %.3f", c, v[c] / n)
        if (c in lua) in_s = in_s (in_s ? ", " : "") x; else { cl += v[c]; out = out (out ? ", " : "") x } }
      printf "%.2f (client %.2f: %s; in script: %s)", t / n, cl / n, out, in_s }' \
    "$OUT/$1.cs0" "$OUT/$1.cs1"
}
echo
echo "| scenario | accepted msg/s | publish errors | publish p50 / p99 ms | deliver p50 / p99 ms | delivered / lost / dup | server CPU µs per msg: A + B + redis | loadgen CPU | Redis calls per publish |"
echo "|---|---|---|---|---|---|---|---|---|"
row() { # NAME TITLE
  jq -r --arg t "$2" --arg a "$APID" --arg b "$BPID" --arg r "$RPID" --arg calls "$(calls "$1")" '
    def f(n): if . == null then "-" else (. * pow(10;n) | round) / pow(10;n) | tostring end;
    (.accepted // .published) as $n | (if .mode == "throughput" then $n else .delivered end) as $per
    | def us(p): (.server_cpu_by_pid[p].cpu_s // null) | if . == null or $per == 0 then null else . * 1e6 / $per end;
    "| \($t) | \(if .mode == "throughput" then (.accepted_per_s|f(0)) else "\($n) in \(.publish_s|f(1)) s" end)"
    + " | \(.errors // .publish_errors)"
    + " | \(.publish_lat_p50_ms // .publish_rtt_p50_ms | f(2)) / \(.publish_lat_p99_ms // .publish_rtt_p99_ms | f(2))"
    + " | \(if .expected > 0 then "\(.lat_p50_ms|f(2)) / \(.lat_p99_ms|f(2))" else "-" end)"
    + " | \(if .expected > 0 then "\(.delivered) of \(.expected) / \(.lost) / \(.duplicated)" else "-" end)"
    + " | \(us($a)|f(1)) + \(us($b)|f(1)) + \(us($r)|f(1)) = \(.server_cpu_s * 1e6 / $per | f(1))\(if .mode == "throughput" then "" else " per delivery" end)"
    + " | \(.loadgen_cpu_pct|f(0))% of a core | \($calls) |"' "$OUT/$1.json"
}
row a-http "(a) HTTP publish, 16 conns, ${DUR} s"
row b-ws   "(b) WS publish, 4 conns × inflight 32, ${DUR} s"
row c-fan  "(c) 1,000 subs on B, 100 msg/s to A, 20 s"
row d-cmds "(d) 10,000 HTTP publishes to A over 1,000 topics, 1,000 subs on B (1 per topic)"
grep -hiE 'error|warn|panic' "$OUT"/rtgate-*.log | sort | uniq -c | sort -rn | head -5 >&2 || true
