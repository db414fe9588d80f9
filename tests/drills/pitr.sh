#!/usr/bin/env bash
# Point-in-time recovery drill (issue 14 part 2): a PostgreSQL cluster of its own, on its own
# port, archives its WAL with pgBackRest; the drill writes rows, takes a full backup, writes
# more, notes a time, then does what an incident does (more writes and a mass DELETE by
# mistake), loses the data directory, restores to the noted time and checks that exactly the
# rows written before it are there. It prints the restore time (RTO) and what the archive
# settings give as RPO; docs/ops/disaster-recovery.md holds a recorded run.
#
#   bash tests/drills/pitr.sh                 # 1,000,000 rows in the backup, 1,000,000 in WAL
#   ROWS=10000 bash tests/drills/pitr.sh      # a quick run (CI)
#
# It never touches the shared PostgreSQL on 5432: its cluster lives in a temporary directory,
# listens on PORT (default 5491) and a socket in that directory, and is removed at the end
# (KEEP=1 keeps it for a look). Needs the PostgreSQL server binaries (Debian's postgresql) and
# pgBackRest (Debian's pgbackrest, installed if absent). Runs as root (the cluster runs as the
# postgres user) or as the postgres user itself.
set -euo pipefail

ROWS="${ROWS:-1000000}"
# Rows written after the full backup, which the restore replays from archived WAL.
WAL_ROWS="${WAL_ROWS:-$ROWS}"
PORT="${PORT:-5491}"
STANZA=drill
started=$(date +%s)
log() { printf '[pitr %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }
now_ms() { date +%s%3N; }

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "the PostgreSQL server binaries (initdb, pg_ctl) are needed: apt-get install postgresql" >&2
  exit 1
fi
if ! command -v pgbackrest >/dev/null; then
  log "installing pgbackrest from Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "port $PORT is taken: PORT=… picks another" >&2
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

work=$(mktemp -d /tmp/thali-pitr.XXXXXX)
chmod 0755 "$work"
[ "$(id -u)" = 0 ] && chown postgres: "$work"
as_pg mkdir -p "$work/log" "$work/lock" "$work/spool"
data="$work/data"
conf="$work/pgbackrest.conf"
cleanup() {
  as_pg "$pg_bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

psql_drill() { as_pg psql -h "$work" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"; }
brest() { as_pg pgbackrest --config="$conf" --stanza="$STANZA" "$@"; }

as_pg tee "$conf" >/dev/null <<EOF
[global]
repo1-path=$work/repo
repo1-retention-full=2
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 32 /dev/urandom | base64)
lock-path=$work/lock
log-path=$work/log
spool-path=$work/spool
log-level-console=warn
log-level-file=info
start-fast=y
compress-type=lz4
process-max=2

[$STANZA]
pg1-path=$data
pg1-port=$PORT
pg1-socket-path=$work
EOF

log "a cluster of its own in $work, port $PORT ($("$pg_bin/postgres" --version))"
as_pg "$pg_bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
# The same archiving as deploy/postgres/postgresql.archive.conf, with the drill's own paths.
as_pg tee -a "$data/postgresql.conf" >/dev/null <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
wal_level = replica
archive_mode = on
archive_command = 'pgbackrest --config=$conf --stanza=$STANZA archive-push %p'
archive_timeout = 60
EOF
as_pg "$pg_bin/pg_ctl" -D "$data" -l "$work/postgres.log" -w start >/dev/null
brest stanza-create
brest check

log "writing $ROWS base rows"
psql_drill <<SQL
CREATE TABLE orders (id bigint PRIMARY KEY, buyer text NOT NULL, amount_minor bigint NOT NULL,
                     written_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO orders (id, buyer, amount_minor)
  SELECT g, 'buyer-' || (g % 1000), 100 + g % 5000 FROM generate_series(1, $ROWS) g;
SQL
db_size=$(psql_drill -c "SELECT pg_size_pretty(pg_database_size('postgres'))")

log "full backup ($db_size database)"
t=$(now_ms)
brest --type=full backup
backup_ms=$(( $(now_ms) - t ))
backup_lsn=$(psql_drill -c "SELECT pg_current_wal_lsn()")

log "$WAL_ROWS rows after the backup in one transaction, then 1,000 in 100 (in WAL only)"
psql_drill -c "INSERT INTO orders (id, buyer, amount_minor)
  SELECT $ROWS + 10000 + g, 'wal', 2 FROM generate_series(1, $WAL_ROWS) g"
for i in $(seq 0 99); do
  psql_drill -c "INSERT INTO orders (id, buyer, amount_minor)
    SELECT $ROWS + g, 'late', 1 FROM generate_series($i * 10 + 1, $i * 10 + 10) g"
done
sleep 1
target=$(psql_drill -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
log "target time: $target"
sleep 1

log "the incident: 500 more rows, then DELETE of half the table by mistake"
psql_drill -c "INSERT INTO orders (id, buyer, amount_minor)
  SELECT $ROWS + 1000 + g, 'after', 1 FROM generate_series(1, 500) g"
wal_bytes=$(psql_drill -c "SELECT pg_size_pretty(pg_current_wal_lsn() - '$backup_lsn'::pg_lsn)")
psql_drill -c "DELETE FROM orders WHERE id <= $ROWS / 2"
after_delete=$(psql_drill -c "SELECT count(*) FROM orders")
log "rows now: $after_delete"
# Archive what was written (check switches the WAL segment and waits for it in the repository).
brest check

log "losing the data directory"
as_pg "$pg_bin/pg_ctl" -D "$data" -m immediate stop >/dev/null
rm -rf "$data"

log "restore to $target"
t0=$(now_ms)
brest --type=time "--target=$target" --target-action=promote restore
t_restored=$(now_ms)
as_pg "$pg_bin/pg_ctl" -D "$data" -l "$work/postgres.log" -w -t 600 start >/dev/null
# Recovery that stops short of the target shuts the server down: give up after 10 minutes.
for _ in $(seq 1 6000); do
  [ "$(psql_drill -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
  sleep 0.1
done
if [ "$(psql_drill -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" != f ]; then
  echo "PITR DRILL FAILED: the restored cluster did not reach the target and promote (log: $work/postgres.log)" >&2
  tail -20 "$work/postgres.log" >&2 || true
  exit 1
fi
t1=$(now_ms)

read -r total base wal late after < <(psql_drill -F ' ' -c "SELECT count(*),
  count(*) FILTER (WHERE id <= $ROWS), count(*) FILTER (WHERE buyer = 'wal'),
  count(*) FILTER (WHERE buyer = 'late'), count(*) FILTER (WHERE buyer = 'after') FROM orders")
log "restored: $total rows ($base from the backup, $wal + $late replayed from WAL, $after after the target)"
if [ "$base" != "$ROWS" ] || [ "$wal" != "$WAL_ROWS" ] || [ "$late" != 1000 ] || [ "$after" != 0 ] \
  || [ "$total" != $(( ROWS + WAL_ROWS + 1000 )) ]; then
  echo "PITR DRILL FAILED: want $ROWS rows from the backup, $WAL_ROWS + 1000 before the target and none after" >&2
  exit 1
fi
# The restored cluster takes writes again (promoted, on a new timeline).
psql_drill -c "INSERT INTO orders (id, buyer, amount_minor) VALUES (0, 'post-restore', 1)"

restore_s=$(awk "BEGIN { printf \"%.1f\", ($t_restored - $t0) / 1000 }")
recover_s=$(awk "BEGIN { printf \"%.1f\", ($t1 - $t_restored) / 1000 }")
rto_s=$(awk "BEGIN { printf \"%.1f\", ($t1 - $t0) / 1000 }")
backup_s=$(awk "BEGIN { printf \"%.1f\", $backup_ms / 1000 }")
repo=$(du -sh "$work/repo" | cut -f1)
cat <<EOF

PITR drill passed: exactly the rows committed before the target time are back.
  in the backup        $db_size, $ROWS rows
  after the backup     $WAL_ROWS + 1,000 rows before the target ($wal_bytes of WAL to replay)
  full backup          ${backup_s} s (repository now $repo, lz4, AES-256)
  restore files        ${restore_s} s   (pgbackrest restore)
  replay to target     ${recover_s} s   (start, WAL replay, promote)
  RTO (restore+replay) ${rto_s} s
  RPO                  at most archive_timeout = 60 s of commits (a WAL segment is archived when
                       full or 60 s after its first write); 0 for what was archived
EOF
