#!/usr/bin/env bash
# Kill one storefront replica under wrk. Identity, two storefront replicas and the facade run as
# separate processes (one SQLite file, no Redis, so every read crosses the facade's client stack
# to a replica), wrk reads storefronts (Zipf over CREATORS creators) for DURATION seconds, and a
# third of the way in one storefront is killed with SIGKILL. Prints wrk's summary (its error
# count is the result) and what the facade's breakers and retries did.
# With MODE=rolling, each storefront in turn is drained with SIGTERM and started again instead
# (a rolling restart): no request should fail.
#
#   bash tests/load/kill-replica.sh          # DURATION=30 CONNECTIONS=200 CREATORS=200 THREADS=2
#   MODE=rolling bash tests/load/kill-replica.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-200}
CREATORS=${CREATORS:-200}
THREADS=${THREADS:-2}
MODE=${MODE:-kill}
step() { printf '[kill-replica] %s\n' "$*" >&2; }

if ! command -v wrk >/dev/null; then
  step "installing wrk (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
step "building (release)"
cargo build --release -q -p thali

work=$(mktemp -d /tmp/thali-kill.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# Every client of this run is 127.0.0.1: rate limits stay on but far above what it sends.
for policy in ANONYMOUS SIGNED_IN LOGIN LOGIN_ADDRESS REGISTER API_KEY; do
  export "THALI_RATE_LIMIT_$policy=1000000000/min"
done
export THALI_DATA_DIR="$work/data" THALI_LOG=warn
bin=target/release/thali
$bin keys init >/dev/null
$bin migrate 2>/dev/null

identity=http://127.0.0.1:18361
$bin serve identity --grpc-addr 127.0.0.1:18361 --admin-addr 127.0.0.1:18362 >"$work/identity.log" 2>&1 &
pids+=($!)
start_storefront() { # n -> pid in $started
  $bin serve storefront --grpc-addr "127.0.0.1:183${1}1" --admin-addr "127.0.0.1:183${1}2" --identity-url $identity \
    >>"$work/storefront-$1.log" 2>&1 &
  started=$!
  pids+=($started)
}
start_storefront 7; first=$started
start_storefront 8; second=$started
$bin serve facade --http-addr 127.0.0.1:18390 --admin-addr 127.0.0.1:18392 --identity-url $identity \
  --storefront-url http://127.0.0.1:18371,http://127.0.0.1:18381 >"$work/facade.log" 2>&1 &
pids+=($!)
for admin in 18362 18372 18382 18392; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
done
base=http://127.0.0.1:18390

step "seeding $CREATORS creators"
token=$($bin token --sub load-owner --role creator)
export base token
seq 1 "$CREATORS" | xargs -P 8 -I{} sh -c \
  'curl -sf -X POST "$base/api/v1/creators" -H "authorization: Bearer $token" -H "content-type: application/json" -d "{\"username\":\"shop_{}\",\"display_name\":\"Shop {}\"}" >/dev/null'

step "wrk for ${DURATION}s, $CONNECTIONS connections ($MODE)"
CREATORS=$CREATORS wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s tests/load/zipf.lua "$base" \
  >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
sleep $((DURATION / 3))
if [ "$MODE" = rolling ]; then
  for n in 7 8; do
    pid=$([ $n = 7 ] && echo "$first" || echo "$second")
    kill -TERM "$pid"; wait "$pid" || true
    step "storefront on :183${n}1 drained and stopped; starting it again"
    start_storefront $n
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:183${n}2/readyz" >/dev/null && break; sleep 0.1; done
    sleep 2
  done
else
  kill -9 "$first"
  step "storefront on :18371 killed"
fi
wait "$wrk_pid"
cat "$work/wrk.txt"
echo
echo "facade after the run:"
curl -s http://127.0.0.1:18392/metrics \
  | grep -E '^(circuit_breaker_state|circuit_breaker_transitions_total|rpc_client_retries_total|rpc_client_retry_budget_exhausted_total)' \
  | sort
