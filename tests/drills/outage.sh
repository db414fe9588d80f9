#!/usr/bin/env bash
# Outage drills (issue 14 part 5): break one thing under a steady trickle of reads and writes
# and measure how long the platform fails and how long it takes to serve again once the broken
# part is back (MTTR), with no person acting. Scenarios:
#
#   kill-service    SIGKILL one of two storefront replicas; a supervisor (here the script, on
#                   Kubernetes the kubelet) starts it again at once
#   stop-redis      Redis stopped for OUTAGE seconds, then started again
#   stop-postgres   PostgreSQL stopped (fast shutdown) for OUTAGE seconds, then started again
#
#   bash tests/drills/outage.sh stop-postgres        # OUTAGE=15 (seconds)
#
# The drill runs its own PostgreSQL cluster (port PG_PORT, default 5492) and its own Redis
# (REDIS_PORT, default 6392) in a temporary directory, never the shared ones on 5432/6379, and
# identity, two storefront replicas and the facade of THALI_BIN (default target/release/thali,
# built if absent) on ports 1846x. Probes: GET /api/v1/store/shop_1 (a cached read) and POST a
# product (a database write) every 200 ms, each with a 3 s limit. Results go to
# docs/ops/drills.md by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
scenario=${1:-}
case "$scenario" in kill-service | stop-redis | stop-postgres) ;; *)
  echo "usage: $0 kill-service|stop-redis|stop-postgres" >&2; exit 64 ;;
esac
OUTAGE=${OUTAGE:-15}
PG_PORT=${PG_PORT:-5492}
REDIS_PORT=${REDIS_PORT:-6392}
bin=${THALI_BIN:-target/release/thali}
started=$(date +%s)
log() { printf '[drill %4ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }
now_ms() { date +%s%3N; }
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for port in "$PG_PORT" "$REDIS_PORT" 18461 18462 18471 18472 18481 18482 18490 18492; do
  if taken "$port"; then echo "port $port is taken" >&2; exit 1; fi
done
if [ ! -x "$bin" ]; then
  log "building $bin"
  cargo build --release -q -p thali
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "the PostgreSQL server binaries (initdb, pg_ctl) are needed: apt-get install postgresql" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi

work=$(mktemp -d /tmp/thali-drill.XXXXXX)
chmod 0755 "$work"
[ "$(id -u)" = 0 ] && chown postgres: "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

log "PostgreSQL on $PG_PORT and Redis on $REDIS_PORT, of their own"
as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $PG_PORT -k $work -c listen_addresses=127.0.0.1" start >/dev/null
pg_start() {
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
    -o "-p $PG_PORT -k $work -c listen_addresses=127.0.0.1" start >/dev/null
}
redis_start() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 50); do taken "$REDIS_PORT" && return 0; sleep 0.1; done
  echo "redis-server did not start on $REDIS_PORT (log: $work/redis.log)" >&2
  return 1
}
redis_start

export THALI_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export THALI_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
# A stopped part drains for 2 s, not the 25 s a rollout gives it.
export THALI_DATA_DIR="$work/data" THALI_LOG=warn THALI_SHUTDOWN_GRACE_S=2
for policy in ANONYMOUS SIGNED_IN LOGIN LOGIN_ADDRESS REGISTER API_KEY; do
  export "THALI_RATE_LIMIT_$policy=1000000000/min"
done
# Each part holds its own keys (ADR 0029); every part trusts the others' public keys, read from
# $THALI_DATA_DIR/trusted-keys. Operator tokens are identity's to sign.
for part in identity storefront facade; do
  THALI_KEYS_DIR="$work/keys/$part" "$bin" keys init >/dev/null
  THALI_KEYS_DIR="$work/keys/$part" "$bin" keys publish --owner $part --to "$work/data/trusted-keys" >/dev/null
done
"$bin" migrate 2>/dev/null

identity=http://127.0.0.1:18461
THALI_KEYS_DIR="$work/keys/identity" "$bin" serve identity --grpc-addr 127.0.0.1:18461 --admin-addr 127.0.0.1:18462 >"$work/identity.log" 2>&1 &
pids+=($!)
start_storefront() { # n (7 or 8) -> pid in $started_pid
  THALI_KEYS_DIR="$work/keys/storefront" "$bin" serve storefront --grpc-addr "127.0.0.1:184${1}1" --admin-addr "127.0.0.1:184${1}2" \
    --identity-url $identity >>"$work/storefront-$1.log" 2>&1 &
  started_pid=$!
  pids+=($started_pid)
}
start_storefront 7; first=$started_pid
start_storefront 8
THALI_KEYS_DIR="$work/keys/facade" "$bin" serve facade --http-addr 127.0.0.1:18490 --admin-addr 127.0.0.1:18492 --identity-url $identity \
  --storefront-url http://127.0.0.1:18471,http://127.0.0.1:18481 >"$work/facade.log" 2>&1 &
pids+=($!)
ready() { for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.1; done; return 1; }
for admin in 18462 18472 18482 18492; do ready $admin; done
base=http://127.0.0.1:18490
token=$(THALI_KEYS_DIR="$work/keys/identity" "$bin" token --sub drill-owner --role creator)
created=$(curl -s -w ' %{http_code}' -X POST "$base/api/v1/creators" -H "authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"username":"shop_1","display_name":"Shop 1"}')
case "$created" in *" 201") ;; *) echo "creating the drill's storefront: $created" >&2; exit 1 ;; esac

probe() { # kind -> lines "start_ms end_ms status" in $work/probe-kind
  local kind=$1 n=0
  while [ ! -f "$work/stop" ]; do
    n=$((n + 1))
    local t status
    t=$(now_ms)
    if [ "$kind" = read ]; then
      status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$base/api/v1/store/shop_1" || true)
    else
      status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 -X POST "$base/api/v1/creators/shop_1/products" \
        -H "authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"title\":\"Chai $n\",\"price\":{\"amount_minor\":4900,\"currency\":\"INR\"}}" || true)
    fi
    echo "$t $(now_ms) ${status:-000}" >>"$work/probe-$kind"
    sleep 0.2
  done
}
probe read & probes=($!)
probe write & probes+=($!)
pids+=("${probes[@]}")
sleep 5

fault=$(now_ms)
case "$scenario" in
  kill-service)
    log "SIGKILL storefront :18471; the supervisor starts it again at once"
    { kill -9 "$first" && wait "$first"; } 2>/dev/null || true
    start_storefront 7
    ready 18472
    repaired=$(now_ms)
    ;;
  stop-redis)
    log "Redis stopped for ${OUTAGE}s"
    kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
    sleep "$OUTAGE"
    redis_start
    repaired=$(now_ms)
    log "Redis started again"
    ;;
  stop-postgres)
    log "PostgreSQL stopped for ${OUTAGE}s"
    as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null
    sleep "$OUTAGE"
    pg_start
    repaired=$(now_ms)
    log "PostgreSQL started again"
    ;;
esac
sleep 15
touch "$work/stop"
for p in "${probes[@]}"; do wait "$p" 2>/dev/null || true; done

python3 - "$work" "$fault" "$repaired" "$scenario" <<'EOF'
import sys
work, fault, repaired, scenario = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"\n{scenario}: fault at 0 s, repaired at {(repaired - fault) / 1000:.1f} s")
worst = 0.0
for kind in ("read", "write"):
    # (start, end, status) of every probe that started after the fault.
    after = [tuple(map(int, line.split())) for line in open(f"{work}/probe-{kind}") if line.strip()]
    after = [(t, e, s) for t, e, s in after if t >= fault]
    ok = lambda s: 200 <= s < 300
    failed = [(t, s) for t, _, s in after if not ok(s)]
    codes = sorted({s for _, s in failed})
    if not failed:
        print(f"  {kind:5}  {len(after)} probes after the fault, none failed: MTTR 0 s")
        continue
    last_fail = max(t for t, _ in failed)
    # Served again: the end of the first success that started after the last failure.
    back = min((e for t, e, s in after if t > last_fail and ok(s)), default=None)
    if back is None:
        print(f"  {kind:5}  {len(failed)}/{len(after)} failed {codes}: NOT serving again by the end")
        worst = float("inf")
        continue
    mttr = max(0, back - repaired) / 1000
    down = (back - min(t for t, _ in failed)) / 1000
    worst = max(worst, mttr)
    again = (f"{mttr:.1f} s after the repair" if back > repaired
             else "as soon as the repaired part answered (before the repair step returned)")
    print(f"  {kind:5}  {len(failed)}/{len(after)} failed {codes}; failing for {down:.1f} s; "
          f"serving again {again} (MTTR {mttr:.1f} s)")
print(f"  worst MTTR: {worst:.1f} s (goal < 60 s)")
sys.exit(0 if worst < 60 else 1)
EOF
