#!/usr/bin/env bash
# Webhook delivery benchmark: deliveries per second from rtgate to a local
# receiver (examples/hookrecv.rs) and what a slow endpoint does to another's
# latency.
#   (a) memory engine, one process: COUNT publishes over 100 topics, one endpoint
#   (b) Redis engine, one process, same load
#   (c) Redis engine, two processes on one Redis, half the publishes to each
#   (d) memory, paced publishes (RATE/s for DURATION s): a fast endpoint alone
#   (e) the same with a second endpoint on the same topics whose receiver
#       answers after 2 s (timeout 1 s: every attempt times out and retries)
# Deliveries/s = distinct webhook-ids / (last arrival - first arrival);
# latency = arrival - the message's ts (publish), ms, first arrivals only.
#   cargo build --release --bin rtgate --example loadgen --example hookrecv && scripts/bench-webhooks.sh
# env: COUNT (20000), RATE (500), DURATION (10), OUT (/tmp/bench-webhooks),
#      LG_CPU (0), SERVER_CPU (1), PROFILE (release; "debug" for a smoke run
#      on debug builds), SMOKE=1 (tiny: COUNT=200, RATE=50, DURATION=2),
#      WAIT_S (120: how long to wait for the deliveries of one scenario).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
if [[ ${SMOKE:-} == 1 ]]; then COUNT=${COUNT:-200} RATE=${RATE:-50} DURATION=${DURATION:-2} WAIT_S=${WAIT_S:-20}; fi
COUNT=${COUNT:-20000} RATE=${RATE:-500} DUR=${DURATION:-10}
OUT=${OUT:-/tmp/bench-webhooks} LG_CPU=${LG_CPU:-0} SCPU=${SERVER_CPU:-1}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
LG=$BIN/examples/loadgen RECV=$BIN/examples/hookrecv GW=$BIN/rtgate
A=http://127.0.0.1:8093 B=http://127.0.0.1:8094 RP=6398 FAST=127.0.0.1:9301 SLOW=127.0.0.1:9302
for b in redis-server:redis-server redis-cli:redis-tools jq:jq curl:curl; do
  command -v "${b%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${b#*:}"; }
done
[[ -x $LG && -x $GW && -x $RECV ]] || {
  echo "build first: cargo build --$PROFILE --bin rtgate --example loadgen --example hookrecv" | sed 's/--debug //' >&2; exit 2; }
for p in $RP 8093 8094 9301 9302; do
  ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "port $p is in use" >&2; exit 2; }
done
mkdir -p "$OUT" && rm -f "$OUT"/*
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
             for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap stop_all EXIT
SECRET=whsec_$(printf 'bench-secret-0123456789' | base64)

# config NAME ENGINE [slow]: writes $OUT/NAME.toml
config() {
  local f=$OUT/$1.toml
  { [[ $2 == redis ]] && printf '[engine]\nkind = "redis"\n[redis]\nurl = "redis://127.0.0.1:%s/"\n' $RP
    printf '[abuse]\npublish_rate_per_connection = 0\nconnect_rate_per_ip = 0\nconnect_rate_global = 0\n'
    printf '[[webhooks]]\nname = "fast"\nurl = "http://%s/hook"\nsecrets = ["%s"]\ntopics = ["bench*"]\n' $FAST "$SECRET"
    if [[ ${3:-} == slow ]]; then
      printf '[[webhooks]]\nname = "slow"\nurl = "http://%s/hook"\nsecrets = ["%s"]\ntopics = ["bench*"]\ntimeout = "1s"\nbackoff = "100ms"\nmax_backoff = "2s"\n' $SLOW "$SECRET"
    fi; } >"$f"
  echo "$f"
}
gateway() {  # gateway PORT CONFIG
  RUST_LOG=warn taskset -c "$SCPU" "$GW" --listen 127.0.0.1:$1 --config "$2" >"$OUT/rtgate-$1.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done
  echo "gateway :$1 not ready, see $OUT/rtgate-$1.log" >&2; exit 1
}
receiver() {  # receiver ADDR [DELAY_MS]
  taskset -c "$LG_CPU" "$RECV" --listen "$1" --delay-ms "${2:-0}" 2>>"$OUT/hookrecv.log" &
  PIDS+=("$!")
  for _ in $(seq 50); do curl -sf "http://$1/stats" >/dev/null && return; sleep 0.1; done
  echo "receiver $1 did not start" >&2; exit 1
}
redis() {
  taskset -c "$SCPU" redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do redis-cli -p $RP ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}
# wait_delivered N: until the fast receiver saw N distinct ids (bounded), then its stats
wait_delivered() {
  local deadline=$((SECONDS + ${WAIT_S:-120})) got=0
  while (( SECONDS < deadline )); do
    got=$(curl -sf "http://$FAST/stats" | jq .distinct)
    (( got >= $1 )) && break
    sleep 0.2
  done
  (( got >= $1 )) || echo "   only $got of $1 delivered" >&2
  curl -sf "http://$FAST/stats"
}
publish() {  # publish NAME URL COUNT
  taskset -c "$LG_CPU" "$LG" --url "$2" --throughput --via http --publishers 16 --count "$3" \
    --topic bench --topics 100 --json --label "$1" >"$OUT/$1-${2##*:}.out" 2>"$OUT/$1-${2##*:}.log" \
    || echo "   (loadgen $1 exited non-zero, see $OUT/$1-${2##*:}.log)" >&2
}
row() { echo "$2" | jq -c --arg n "$1" '{scenario: $n, delivered: .distinct, requests, per_sec: (.per_sec|floor), p50_ms, p99_ms, max_ms}' | tee -a "$OUT/results.jsonl"; }

echo "== (a) memory, 1 process" >&2
receiver $FAST; gateway 8093 "$(config a memory)"
publish a $A "$COUNT"; row a-memory-1 "$(wait_delivered "$COUNT")"; stop_all

echo "== (b) redis, 1 process" >&2
redis; receiver $FAST; gateway 8093 "$(config b redis)"
publish b $A "$COUNT"; row b-redis-1 "$(wait_delivered "$COUNT")"; stop_all

echo "== (c) redis, 2 processes" >&2
redis; receiver $FAST; cfg=$(config c redis); gateway 8093 "$cfg"; gateway 8094 "$cfg"
publish c $A $((COUNT / 2)) & p1=$!; publish c $B $((COUNT / 2)) & p2=$!; wait $p1 $p2
row c-redis-2 "$(wait_delivered $((COUNT / 2 * 2)))"; stop_all

pace() {  # pace NAME: RATE/s for DUR s on one topic, one WebSocket subscriber
  taskset -c "$LG_CPU" "$LG" --url $A --topic bench-paced --subscribers 1 --rate "$RATE" --duration "$DUR" \
    --json --label "$1" >"$OUT/$1.out" 2>"$OUT/$1.log" || echo "   (loadgen $1 exited non-zero, see $OUT/$1.log)" >&2
  grep '^{' "$OUT/$1.out" | tail -1 | jq -r '.published // empty'
}
echo "== (d) one fast endpoint, paced" >&2
receiver $FAST; gateway 8093 "$(config d memory)"
n=$(pace d); row d-fast-alone "$(wait_delivered "${n:-1}")"; stop_all

echo "== (e) fast endpoint beside a slow one" >&2
receiver $FAST; receiver $SLOW 2000; gateway 8093 "$(config e memory slow)"
n=$(pace e); row e-fast-beside-slow "$(wait_delivered "${n:-1}")"
echo "   slow endpoint: $(curl -sf "http://$SLOW/stats" | jq -c '{requests, distinct}')" >&2; stop_all

echo "results: $OUT/results.jsonl" >&2
