#!/usr/bin/env bash
# Redis CPU per live delivery against the number of watched topics (issue 11
# item 13). For each TOPICS count: a fresh redis-server (:6398) and one rtgate
# (:8093) on it, both pinned to SERVER_CPU; examples/watch_cost.rs (on LG_CPU)
# subscribes TOPICS topics over WebSocket, then publishes PUBLISHES messages one
# at a time, each awaited at its subscriber, and prints Redis CPU
# (INFO used_cpu_sys + used_cpu_user) and commands per delivery. Heartbeats are
# relaxed: the subscribers only read after setup, which takes minutes on the old
# reader at 100,000 topics.
#   cargo build --release --bin rtgate --example watch_cost && scripts/bench-watch.sh
# env: GW (target/release/rtgate: compare another build with GW=path),
#      COUNTS ("1000 10000 100000"), PUBLISHES (2000), OUT (/tmp/bench-watch),
#      LG_CPU (0), SERVER_CPU (1)
set -euo pipefail
cd "$(dirname "$0")/.."
GW=${GW:-target/release/rtgate} LG=${LG:-target/release/examples/watch_cost}
COUNTS=${COUNTS:-"1000 10000 100000"} PUBLISHES=${PUBLISHES:-2000} OUT=${OUT:-/tmp/bench-watch}
LG_CPU=${LG_CPU:-0} SCPU=${SERVER_CPU:-1} RP=6398 GP=8093
[[ -x $LG && -x $GW ]] || { echo "build first: cargo build --release --bin rtgate --example watch_cost" >&2; exit 2; }
for p in $RP $GP; do
  ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "port $p is in use" >&2; exit 2; }
done
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
STARTED=()
stop() { for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
         for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done; STARTED=(); }
trap stop EXIT
for n in $COUNTS; do
  taskset -c "$SCPU" redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no \
    >"$OUT/redis-$n.log" 2>&1 &
  STARTED+=("$!")
  for _ in $(seq 100); do redis-cli -p $RP ping >/dev/null 2>&1 && break; sleep 0.1; done
  RUST_LOG=warn RTGATE_ENGINE__KIND=redis RTGATE_REDIS__URL=redis://127.0.0.1:$RP/ \
    RTGATE_LIMITS__MAX_TOPICS_PER_CONNECTION=1000 RTGATE_HEARTBEAT__INTERVAL=60s RTGATE_HEARTBEAT__TIMEOUT=3600s \
    taskset -c "$SCPU" "$GW" --listen 127.0.0.1:$GP >"$OUT/rtgate-$n.log" 2>&1 &
  STARTED+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$GP/readyz" >/dev/null && break; sleep 0.1; done
  taskset -c "$LG_CPU" "$LG" "http://127.0.0.1:$GP" "redis://127.0.0.1:$RP/" "$n" "$PUBLISHES" | tee -a "$OUT/results.tsv"
  stop
done
