#!/usr/bin/env bash
# The 10,000-user load test with the realistic mix (issue 14, part 1; ADR 0037).
#
#   just load-test                  # steady profile, writes docs/perf/baseline.md
#   PROFILE=spike just load-test    # 10× arrivals for 30 s, docs/perf/load-spike.md
#   PROFILE=soak just load-test     # 30 minutes, memory and descriptors, docs/perf/load-soak.md
#
# It builds the release binary and the generator, makes a database of its own (THALI_LOAD_DB,
# default thali_load on the PostgreSQL at PGHOST/PGPORT, 127.0.0.1:5432), migrates and seeds it
# (1,000 creators × 20 products, 1,000 restaurants, 100,000 past bookings, 10,000 buyers with a
# live session), starts the whole platform in one process on PostgreSQL and Redis (THALI_LOAD_REDIS,
# default database 5 of the Redis on 127.0.0.1:6379, flushed first), and runs tests/load/loadgen.rs
# against the REST facade. Knobs: USERS, RATE, WARMUP, DURATION, LOGIN_CAP, REPORT (another
# report file, e.g. for a smaller crowd). Every run seeds
# anew (the users' sessions rotate as they run).
# Exit status: 0 when every target is met and nothing regressed by over 20 %, 3 when not (the
# report says which), anything else when the run itself failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-steady}
USERS=${USERS:-10000}
WARMUP=${WARMUP:-60}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB=${THALI_LOAD_DB:-thali_load}
REDIS=${THALI_LOAD_REDIS:-redis://127.0.0.1:6379/5}
export PGHOST PGPORT PGUSER
case "$PROFILE" in
  steady) report=docs/perf/baseline.md ;;
  spike) report=docs/perf/load-spike.md ;;
  soak) report=docs/perf/load-soak.md ;;
  *) echo "PROFILE must be steady, spike or soak" >&2; exit 64 ;;
esac
report=${REPORT:-$report}

step() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# 10,000 connections need as many descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < USERS + 2000 )); then
  step "the open-file limit $(ulimit -n) is below $((USERS + 2000)): raise it (ulimit -Hn) or lower USERS"
  exit 69
fi
for tool in psql redis-cli curl; do
  command -v $tool >/dev/null || { step "$tool is needed (Debian: postgresql-client, redis-tools, curl)"; exit 69; }
done
pg_isready -q || { step "PostgreSQL on $PGHOST:$PGPORT does not answer"; exit 69; }

step "building the platform and the generator (release)"
cargo build --release -q -p thali
cargo build --release -q -p thali-tests --example loadgen
gen=target/release/examples/loadgen

work=$(mktemp -d /tmp/thali-load.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
export THALI_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
export THALI_DATA_DIR="$work/data"

fixture=$work/fixture.json
step "creating database $DB (dropped first if it exists)"
psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
target/release/thali migrate >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log"; exit 1; }
step "seeding"
"$gen" seed --fixture "$fixture" --users "$USERS"
redis-cli -u "$REDIS" FLUSHDB >/dev/null

# Every client of this run is 127.0.0.1: rate limits stay on (their cost is measured) but far
# above what it sends.
for policy in ANONYMOUS SIGNED_IN LOGIN LOGIN_ADDRESS REGISTER API_KEY WEBHOOK; do
  export "THALI_RATE_LIMIT_$policy=1000000000/min"
done
step "starting the platform (one process, PostgreSQL $DB, Redis $REDIS)"
THALI_REDIS_URL="$REDIS" THALI_HTTP_ADDR=127.0.0.1:18380 THALI_GRPC_ADDR=127.0.0.1:18381 \
  THALI_ADMIN_ADDR=127.0.0.1:18382 THALI_SANDBOX_ADDR=127.0.0.1:18383 THALI_LOG=warn \
  target/release/thali serve >"$work/thali.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  curl -sf http://127.0.0.1:18382/readyz >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/thali.log"; exit 1; }
  sleep 0.2
done
curl -sf http://127.0.0.1:18382/readyz >/dev/null || { step "the platform did not become ready"; cat "$work/thali.log"; exit 1; }

args=(--base http://127.0.0.1:18380 --sandbox http://127.0.0.1:18383 --admin http://127.0.0.1:18382
  --server-pid "$pid" --fixture "$fixture" --users "$USERS" --profile "$PROFILE" --warmup "$WARMUP"
  --report "$report" --setup "Release build of $(git rev-parse --short HEAD 2>/dev/null || echo '?'); the whole platform in one process (\`thali serve\`) on PostgreSQL $(psql -Atc 'show server_version' -d postgres | cut -d' ' -f1) and Redis $(redis-cli -u "$REDIS" INFO server | tr -d '\r' | awk -F: '/^redis_version/ {print $2}'), database pool of 20, sandbox gateway in the same process; CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB.")
[ -n "${RATE:-}" ] && args+=(--rate "$RATE")
[ -n "${DURATION:-}" ] && args+=(--duration "$DURATION")
[ -n "${LOGIN_CAP:-}" ] && args+=(--login-cap "$LOGIN_CAP")
status=0
"$gen" run "${args[@]}" >"$work/report.md" || status=$?
if grep -q -i 'panicked' "$work/thali.log"; then
  step "the server panicked (see $work/thali.log)"; status=1
fi
step "report: $report (server log and raw report in $work)"
exit $status
