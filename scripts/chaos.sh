#!/usr/bin/env bash
# Chaos run of the delivery guarantee (docs/reliability.md): two gateways on
# one redis-server with AOF (appendfsync always), subscribers on WebSocket,
# SSE, long polling and gRPC resuming by cursor, steady publishers; kill -9
# of each gateway, a Redis restart and slow consumers during the run. Exits
# non-zero on any lost, duplicated or reordered message.
#
#   scripts/chaos.sh --short            # CI: 45 s of publishing, 1 fault cycle, debug build
#   scripts/chaos.sh                    # 5 minutes, 5 cycles, 100 subscribers per transport, release build
#   scripts/chaos.sh -- --rate 200      # arguments after -- go to the driver (examples/chaos)
#
# Needs redis-server on PATH (Debian: apt-get install -y redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
if [ "${1:-}" = "--short" ]; then short=true; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "scripts/chaos.sh: redis-server not found; install it (Debian: apt-get install -y redis-server)" >&2
  exit 2
fi

target="${CARGO_TARGET_DIR:-target}"
if $short; then
  cargo build --locked --bin rtgate --example chaos
  exec "$target/debug/examples/chaos" --rtgate "$target/debug/rtgate" \
    --duration 45 --cycles 1 --subs 25 "$@"
else
  cargo build --locked --release --bin rtgate --example chaos
  exec "$target/release/examples/chaos" --rtgate "$target/release/rtgate" \
    --duration 300 --cycles 5 --subs 100 "$@"
fi
