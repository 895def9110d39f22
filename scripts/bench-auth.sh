#!/usr/bin/env bash
# Auth benchmark with the shared instrument: the shared loadgen (CPU 0) against rtgate started by
# ../shared/peers/start-rtgate.sh (CPU 1), a fresh server per scenario, one run.
#   conn-off / conn-hs256 / conn-es256   N WebSocket connections set up with no auth, an HS256
#                                        token, an ES256 token (verified at every connect):
#                                        connections/s and server CPU µs per connection
#   fanout-off / fanout-hs256            1,000 WebSocket subscribers x 50 msg/s, auth off vs on
#                                        (token per subscriber, API key publisher):
#                                        server CPU-s per 1M deliveries
#   cargo build --release && scripts/bench-auth.sh
# env: CONNS (10000), DURATION (10), OUT (/tmp/bench-auth), LOADGEN (the shared loadgen binary)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD SHARED=$ROOT/../shared
GW=$ROOT/target/release/rtgate
LG=${LOADGEN:-/tmp/rtgate-bench-loadgen/release/loadgen}
CONNS=${CONNS:-10000} DUR=${DURATION:-10} OUT=${OUT:-/tmp/bench-auth} PORT=8090
for b in jq curl taskset; do command -v $b >/dev/null || { echo "needs $b" >&2; exit 2; }; done
[[ -x $GW ]] || { echo "build first: cargo build --release" >&2; exit 2; }
if [[ ! -x $LG ]]; then
  (cd "$SHARED/bench/loadgen" && CARGO_TARGET_DIR=/tmp/rtgate-bench-loadgen cargo build --release --locked)
fi
mkdir -p "$OUT" && rm -rf "${OUT:?}"/*
SECRET=bench-secret-0123456789abcdef0123456789abcdef API_KEY=bench-api-key-0123456789abcdef
FIX=$ROOT/tests/fixtures/auth
cat >"$OUT/off.toml" <<TOML
TOML
cat >"$OUT/on.toml" <<TOML
[auth]
hmac_secrets = ["$SECRET"]
ec_public_keys = ["$FIX/ec-public.pem"]
api_keys = ["$API_KEY"]
[abuse]
# Every connection here is user "bench": lift the per-user cap (default 100).
max_connections_per_user = 0
TOML
HS=$("$GW" token --secret "$SECRET" --sub bench --subscribe 'b*' --ttl 2h)
ES=$("$GW" token --key "$FIX/ec-private.pem" --sub bench --subscribe 'b*' --ttl 2h)

RUN_DIR=$OUT/peer
stop() { "$SHARED/peers/stop-peer.sh" "$RUN_DIR" >/dev/null 2>&1 || true; }
trap stop EXIT
# run NAME CONFIG LOADGEN-ARGS...
run() {
  local name=$1 cfg=$2; shift 2
  stop
  local pids
  pids=$(RTGATE_BIN=$GW RUN_DIR=$RUN_DIR PORT=$PORT EXTRA_ARGS="--config $OUT/$cfg.toml" "$SHARED/peers/start-rtgate.sh" memory)
  echo "== $name" >&2
  taskset -c 0 "$LG" --server-pid "$pids" --label "$name" --json "$OUT/results.jsonl" --max-runtime 300 "$@" \
    >"$OUT/$name.log" 2>&1 || echo "   ($name: loadgen exited non-zero, see $OUT/$name.log)" >&2
  grep -E '^setup|deliveries|server CPU' "$OUT/$name.log" | head -4 >&2
  stop
  sleep 2
}
U="ws://127.0.0.1:$PORT/v1/ws?topic=b1"
run conn-off off --mode idle --subs "$CONNS" --sub-url "$U" --duration 1
run conn-hs256 on --mode idle --subs "$CONNS" --sub-url "$U&access_token=$HS" --duration 1
run conn-es256 on --mode idle --subs "$CONNS" --sub-url "$U&access_token=$ES" --duration 1
P="http://127.0.0.1:$PORT/v1/publish/b2"
F=(--mode fanout --subs 1000 --rate 50 --payload 128 --pub-concurrency 4 --duration "$DUR" --warmup 3 --drain 3)
run fanout-off off "${F[@]}" --sub-url "ws://127.0.0.1:$PORT/v1/ws?topic=b2" --pub-url "$P"
run fanout-hs256 on "${F[@]}" --sub-url "ws://127.0.0.1:$PORT/v1/ws?topic=b2&access_token=$HS" --pub-url "$P?access_token=$API_KEY"
echo
echo "| scenario | connections | connections/s | server CPU µs per connection | deliveries/s | p99 ms | server CPU-s per 1M deliveries | lost | dup |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -r '[.label, .connected, (.connects_per_s|floor), ((.server_cpu_s_setup / .connected * 1e6)|floor),
  ((.deliveries_per_s // 0)|floor), (.latency_ms.p99 // "-"), ((.server_cpu_s_per_M_deliveries // null) | if . == null then "-" else (. * 100 | floor) / 100 end), (.lost // "-"), (.dup // "-")]
  | "| " + (map(tostring) | join(" | ")) + " |"' "$OUT/results.jsonl"
