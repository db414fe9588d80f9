#!/usr/bin/env bash
# Load scenario for the storefront read (issue 4): seeds creators, drives
# GET /api/v1/store/{username} with Zipf popularity through wrk against the embedded platform,
# then a bare axum handler with a body of the same size, and writes docs/perf/storefront.md.
# Knobs: CREATORS (1000), PRODUCTS (5), CONNECTIONS (10000), THREADS (2), DURATION (30s),
# WARMUP (10s), ZIPF_S (1.0). With THALI_REDIS_URL set, the platform runs as two replicas
# sharing Redis (and the SQLite file), each driven by half the connections.
set -euo pipefail
cd "$(dirname "$0")/../.."
CREATORS=${CREATORS:-1000}
PRODUCTS=${PRODUCTS:-5}
CONNECTIONS=${CONNECTIONS:-10000}
THREADS=${THREADS:-2}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-10s}
ZIPF_S=${ZIPF_S:-1.0}
export CREATORS ZIPF_S PREFIX=shop_

step() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# 10k connections need as many descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
step "open-file limit $(ulimit -n)"
if ! command -v wrk >/dev/null; then
  step "installing wrk (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

step "building (release)"
cargo build --release -q -p thali
cargo build --release -q -p thali-tests --example bare_http

work=$(mktemp -d /tmp/thali-load.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# Every client of this run is 127.0.0.1: rate limits stay on but far above what it sends.
for policy in ANONYMOUS SIGNED_IN LOGIN LOGIN_ADDRESS REGISTER API_KEY; do
  export "THALI_RATE_LIMIT_$policy=1000000000/min"
done

start_platform() { # http_port grpc_port admin_port
  THALI_DATA_DIR="$work/data" THALI_HTTP_ADDR="127.0.0.1:$1" THALI_GRPC_ADDR="127.0.0.1:$2" \
    THALI_ADMIN_ADDR="127.0.0.1:$3" THALI_LOG=warn \
    target/release/thali serve >"$work/thali-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && return 0
    sleep 0.2
  done
  step "platform on :$1 did not become ready"; cat "$work/thali-$1.log"; exit 1
}

step "starting the platform"
start_platform 18180 18181 18182
base=http://127.0.0.1:18180

step "seeding $CREATORS creators × $PRODUCTS products"
curl -sf -X POST $base/api/v1/auth/register -H 'content-type: application/json' \
  -d '{"email":"load@example.com","password":"correct horse battery","display_name":"Load","role":"creator"}' >/dev/null
token=$(curl -sf -X POST $base/api/v1/auth/login -H 'content-type: application/json' \
  -d '{"email":"load@example.com","password":"correct horse battery"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["access_token"])')
seed_one() {
  local i=$1
  curl -sf -X POST "$base/api/v1/creators" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"username\":\"shop_$i\",\"display_name\":\"Shop $i\",\"bio\":\"Tea, snacks and things made by hand in lane $i.\"}" >/dev/null
  for p in $(seq 1 "$PRODUCTS"); do
    curl -sf -X POST "$base/api/v1/creators/shop_$i/products" -H "authorization: Bearer $token" -H 'content-type: application/json' \
      -d "{\"title\":\"Item $p of shop $i\",\"description\":\"Fresh every morning.\",\"price\":{\"amount_minor\":$((p * 1500)),\"currency\":\"INR\"},\"stock\":$((p * 10))}" >/dev/null
  done
  if (( i % 100 == 0 )); then step "  seeded $i / $CREATORS"; fi
}
export -f seed_one step
export base token PRODUCTS CREATORS
seq 1 "$CREATORS" | xargs -P 8 -I{} bash -c 'seed_one {}'

curl -sf "$base/api/v1/store/shop_1" >"$work/body.json"
body_bytes=$(wc -c <"$work/body.json")
mode="single process"
targets=("$base")
admins=("http://127.0.0.1:18182")
if [ -n "${THALI_REDIS_URL:-}" ]; then
  step "restarting as two replicas sharing Redis"
  cleanup; pids=()
  export THALI_REDIS_URL
  start_platform 18180 18181 18182
  start_platform 18280 18281 18282
  targets=("$base" "http://127.0.0.1:18280")
  admins=("http://127.0.0.1:18182" "http://127.0.0.1:18282")
  mode="two replicas sharing Redis"
fi

run_wrk() { # duration connections out_prefix urls...
  local duration=$1 conns=$2 out=$3; shift 3
  local n=$#; local per=$(( conns / n )); local i=0; local runs=()
  for url in "$@"; do
    wrk -t"$THREADS" -c"$per" -d"$duration" --timeout 10s -s tests/load/zipf.lua "$url" >"$out.$i.txt" 2>&1 &
    runs+=($!)
    i=$((i + 1))
  done
  # Only the wrk runs: the servers are background jobs of this shell too.
  wait "${runs[@]}"
}

merge() { # out_prefix count -> one JSON summary (sums rates and errors, worst percentiles)
  python3 - "$1" "$2" <<'PY'
import json, sys
prefix, n = sys.argv[1], int(sys.argv[2])
parts = []
for i in range(n):
    text = open(f"{prefix}.{i}.txt").read()
    parts.append(json.loads([l for l in text.splitlines() if l.startswith('{')][-1]))
out = {k: sum(p[k] for p in parts) for k in parts[0] if k.startswith(('requests', 'rps', 'errors'))}
out.update({k: max(p[k] for p in parts) for k in parts[0] if k.endswith('_ms') or k == 'duration_s'})
print(json.dumps(out))
PY
}

step "warming up ($WARMUP, 200 connections)"
run_wrk "$WARMUP" 200 "$work/warmup" "${targets[@]}"
for i in "${!targets[@]}"; do curl -sf "${admins[$i]}/metrics" >"$work/metrics-before-$i.txt"; done
cat "$work"/metrics-before-*.txt >"$work/metrics-before.txt"

step "measuring the platform ($DURATION, $CONNECTIONS connections)"
run_wrk "$DURATION" "$CONNECTIONS" "$work/platform" "${targets[@]}"
merge "$work/platform" "${#targets[@]}" >"$work/wrk-platform.json"
for i in "${!targets[@]}"; do curl -sf "${admins[$i]}/metrics" >"$work/metrics-after-$i.txt"; done
cat "$work"/metrics-after-*.txt >"$work/metrics-after.txt"
cat "$work/wrk-platform.json"

step "stopping the platform; measuring the bare handler"
cleanup; pids=()
target/release/examples/bare_http 127.0.0.1:18190 "$work/body.json" >"$work/bare.log" 2>&1 &
pids+=($!)
sleep 0.5
run_wrk "$WARMUP" 200 "$work/bare-warmup" http://127.0.0.1:18190
run_wrk "$DURATION" "$CONNECTIONS" "$work/bare" http://127.0.0.1:18190
merge "$work/bare" 1 >"$work/wrk-bare.json"
cat "$work/wrk-bare.json"

{
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) × $(nproc)"
  echo "Memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
  echo "Kernel: $(uname -sr)"
  echo "Rust: $(rustc --version)"
  echo "Open-file limit: $(ulimit -n)"
} >"$work/machine.txt"
cat >"$work/params.json" <<JSON
{"date": "$(date -u +%Y-%m-%d)", "creators": $CREATORS, "products": $PRODUCTS, "zipf_s": $ZIPF_S,
 "wrk": "$(wrk -v 2>&1 | head -1 | awk '{print $2}')", "threads": $THREADS, "connections": $CONNECTIONS,
 "duration": "$DURATION", "warmup": "$WARMUP", "mode": "$mode", "body_bytes": $body_bytes}
JSON
[ -f tests/load/notes.md ] && cp tests/load/notes.md "$work/notes.md"
out=docs/perf/storefront.md
if [ -n "${THALI_REDIS_URL:-}" ]; then out=docs/perf/storefront-two-replicas.md; fi
python3 tests/load/report.py "$work" "$out"
step "written $out (raw data in $work)"
