# Thali tasks. `just --list` shows them all.

# Run the whole platform embedded (SQLite, generated keys) in release mode.
run:
    cargo run --release

# Every test. PostgreSQL tests run when THALI_TEST_DATABASE_URL is set (CI sets it).
test:
    cargo test --workspace

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Dependency scanning as CI runs it: cargo-deny (pinned; installed from crates.io if absent) over
# advisories (the offline RustSec copy in ../shared/advisory-db), licenses, bans and sources.
audit:
    bash .ci/deny

# The alert rules as CI checks them: promtool check config/rules and the rules' unit tests
# (observability/tests/alerts.test.yml); promtool is unpacked from Debian's package if absent.
alerts:
    bash .ci/promtool

# The Kubernetes overlays as CI checks them: each renders with kustomize and passes a strict
# schema check (kustomize and kubernetes-validate are fetched if absent).
k8s-check:
    bash .ci/k8s

# Roll a release out with automatic rollback: `just rollout deploy/k8s/overlays/prod 0.2.0`.
rollout overlay tag:
    bash deploy/rollout.sh {{overlay}} {{tag}}

# Outage drills on a PostgreSQL and Redis of their own: `just drill stop-postgres`
# (kill-service | stop-redis | stop-postgres; prints the MTTR; docs/ops/drills.md).
drill scenario:
    bash tests/drills/outage.sh {{scenario}}

# Point-in-time recovery drill with pgBackRest (docs/ops/disaster-recovery.md).
drill-pitr rows="1000000":
    ROWS={{rows}} bash tests/drills/pitr.sh

# Exactly what CI runs (starts PostgreSQL and Redis if they are down).
ci:
    CI=true bash .ci/run

# Apply pending migrations to THALI_DATABASE_URL (or the embedded SQLite file).
migrate:
    cargo run --release -- migrate

# Mint an operator token: `just token alice creator`.
token sub role="creator":
    cargo run --release -q -- token --sub {{sub}} --role {{role}}

# Run one part: `just serve storefront`, `just serve facade`.
serve part="all":
    cargo run --release -- serve {{part}}

# The 10,000-user load test with the realistic mix on PostgreSQL and Redis: seeds its own
# database, writes docs/perf/baseline.md and flags regressions over 20 % (PROFILE=spike|soak for
# the other profiles; tests/load/mix.sh lists the knobs). Other scenarios by name:
# `just load-test storefront` (the cached read under wrk, docs/perf/storefront.md) and
# `just load-test kill-replica` (a storefront replica killed under wrk; MODE=rolling drains and
# restarts each replica instead).
load-test target="mix":
    bash tests/load/{{target}}.sh

# Job queue throughput (4 workers, no-op jobs) and commit-to-handler latency on PostgreSQL (docs/perf/jobs.md).
bench-jobs jobs="50000" samples="300":
    THALI_TEST_DATABASE_URL="${THALI_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" cargo run --release -q -p thali-tests --example jobs_bench -- {{jobs}} {{samples}}

# Outbox latency: registration commit → welcome notification stored, whole platform on PostgreSQL (docs/perf/jobs.md).
bench-outbox samples="300":
    THALI_TEST_DATABASE_URL="${THALI_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" cargo run --release -q -p thali-tests --example outbox_bench -- {{samples}}

# Identity's writes with and without a flood of failed-login audit records, and against chaining in each request (docs/perf/audit.md).
bench-audit seconds="10" writers="8" flooders="8":
    THALI_TEST_DATABASE_URL="${THALI_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" cargo run --release -q -p thali-tests --example audit_flood_bench -- {{seconds}} {{writers}} {{flooders}}

# Booking on PostgreSQL through REST: 64 clients racing, availability and search latency (docs/perf/booking.md).
bench-booking restaurants="10000" seconds="20":
    THALI_TEST_DATABASE_URL="${THALI_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" cargo run --release -q -p thali-tests --example booking_bench -- {{restaurants}} {{seconds}}

# The hot path from outside: the cached storefront page (wrk) and a partner's GetStorefront (h2load)
# against bare axum and bare tonic handlers serving the same bytes; prints the two ratios (docs/perf/hot-path.md).
bench-hot-path seconds="10" connections="256" clients="64" streams="8":
    command -v wrk >/dev/null && command -v h2load >/dev/null || $(command -v sudo) apt-get install -y wrk nghttp2-client
    cargo run --release -q -p thali-tests --example hot_path_bench -- {{seconds}} {{connections}} {{clients}} {{streams}}

# Payments on PostgreSQL through REST: signed webhooks replayed with duplicates and 10 % processing faults, then checkout p95 (docs/perf/payments.md).
bench-payments orders="2000" checkouts="400":
    THALI_TEST_DATABASE_URL="${THALI_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" cargo run --release -q -p thali-tests --example payments_bench -- {{orders}} {{checkouts}}

# Cost of the gRPC client stack vs a raw channel, and breaker fail-fast latency (docs/perf/resilience.md).
bench-client seconds="10" concurrency="64":
    cargo run --release -q -p thali-tests --example client_stack -- {{seconds}} {{concurrency}}
