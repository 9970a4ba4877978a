#!/usr/bin/env bash
# `plan` over many tables (issue 10, item 5): creates N small tables in a PostgreSQL database of
# its own (bench_many_<pid>, schema bench_many) and, with TARGETS=1, their targets in the BigQuery
# emulator, then times `datasync plan` over all of them and counts what it asked for.
# Not part of `cargo test`.
#
#   bench/plan_many.sh [N]                  (default 10000)
#   TARGETS=1 bench/plan_many.sh 1000       also create the targets first (slow on the emulator)
#   BUILD=debug bench/plan_many.sh 1000     time a debug build (default: release)
#   ANALYZE=1 …                             ANALYZE the tables first (row estimates, no counts)
#   DATASYNC_BIN=/path/to/datasync …        time that binary instead of building one
#   EMULATOR_LOG=/path/to/emulator.log …    also count the emulator's requests for the dataset
#   PLAN_LOG=/path/to/file …                keep `plan`'s debug log there
#   DATASYNC_TEST_BIGQUERY_URL=http://127.0.0.1:9050 (default)
#
# Counts printed:
#   pg_transactions       transactions on the bench database during `plan` (pg_stat_database;
#                         every catalog query, count and session SET is one), any binary
#   catalog_queries       source catalog queries datasync logged (`--log-level debug`)
#   count_queries         exact row counts datasync logged
#   bigquery_requests     BigQuery HTTP requests datasync logged, by kind
#   emulator_requests     requests naming the dataset in EMULATOR_LOG, when given
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
BUILD="${BUILD:-release}"
BQ="${DATASYNC_TEST_BIGQUERY_URL:-http://127.0.0.1:9050}"
PGHOST_ARGS="-X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres"
DB="bench_many_$$"
WORK=$(mktemp -d)
DATASET="plan_many_$$"
cleanup() {
  psql $PGHOST_ARGS -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  curl -s -X DELETE "$BQ/bigquery/v2/projects/datasync-test/datasets/$DATASET?deleteContents=true" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${DATASYNC_BIN:-}" ]; then
  DS="$DATASYNC_BIN"
elif [ "$BUILD" = debug ]; then
  cargo build --bin datasync >/dev/null
  DS=target/debug/datasync
else
  cargo build --release --bin datasync >/dev/null
  DS=target/release/datasync
fi
echo "binary: $DS" >&2

echo "creating $N tables in PostgreSQL database $DB…" >&2
psql $PGHOST_ARGS -d postgres -c "CREATE DATABASE $DB"
# Committed every 200 tables: one transaction creating thousands would run out of lock slots
# (max_locks_per_transaction).
psql $PGHOST_ARGS -d "$DB" -c "CREATE SCHEMA bench_many" -c "DO \$\$ BEGIN FOR i IN 1..$N LOOP
  EXECUTE format('CREATE TABLE bench_many.t%s (id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz)', i);
  IF i % 200 = 0 THEN COMMIT; END IF; END LOOP; END \$\$;"

{
  printf "bigquery:\n  project: datasync-test\n  dataset: %s\n  endpoint: %s\n  emulator: true\n  create_dataset: true\n" "$DATASET" "$BQ"
  printf "defaults:\n  parallelism: 8\nsources:\n  pg:\n    type: postgres\n    url: postgres://postgres@127.0.0.1:5432/%s\n    tables:\n" "$DB"
  for i in $(seq 1 "$N"); do printf "      bench_many.t%s: {}\n" "$i"; done
} >"$WORK/sync.yaml"

if [ "${TARGETS:-0}" = 1 ]; then
  echo "creating the targets with apply (emulator)…" >&2
  GCE_METADATA_HOST=127.0.0.1:9 "$DS" -c "$WORK/sync.yaml" apply --auto-approve >"$WORK/apply.out" 2>&1 || true
  tail -n 1 "$WORK/apply.out" >&2
fi

if [ "${ANALYZE:-0}" = 1 ]; then
  # With statistics the catalog has row estimates, so a replace plan counts no rows.
  psql $PGHOST_ARGS -d "$DB" -c "ANALYZE"
fi

xacts() {
  sleep 1
  psql $PGHOST_ARGS -d postgres -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$DB'"
}
emulator_lines() {
  if [ -n "${EMULATOR_LOG:-}" ] && [ -r "$EMULATOR_LOG" ]; then wc -l <"$EMULATOR_LOG"; else echo 0; fi
}
before_xacts=$(xacts)
before_log=$(emulator_lines)

echo "timing plan over $N tables…" >&2
/usr/bin/time -f 'plan_wall_s=%e cpu_s=%U+%S peak_rss_kb=%M' -o "$WORK/time" \
  env GCE_METADATA_HOST=127.0.0.1:9 LOG_LEVEL=debug "$DS" -c "$WORK/sync.yaml" --log-level debug plan --format json \
  >"$WORK/plan.json" 2>"$WORK/err" || true
cat "$WORK/time"
if [ -n "${PLAN_LOG:-}" ]; then cp "$WORK/err" "$PLAN_LOG"; fi
echo "pg_transactions=$(( $(xacts) - before_xacts ))"
echo "catalog_queries=$(grep -c 'source catalog query' "$WORK/err" || true)"
echo "count_queries=$(grep -c 'counting rows' "$WORK/err" || true)"
echo "bigquery_requests=$(grep -c 'BigQuery request' "$WORK/err" || true)"
grep 'BigQuery request' "$WORK/err" | sed -E 's/.*context="?([a-z.]+( [a-z]+)?).*/  \1/' | sort | uniq -c || true
if [ -n "${EMULATOR_LOG:-}" ]; then
  tail -n +"$((before_log + 1))" "$EMULATOR_LOG" | grep '"http.request"' | grep "$DATASET" >"$WORK/emulator" || true
  echo "emulator_requests=$(wc -l <"$WORK/emulator")"
  cat "$WORK/emulator" \
    | python3 -c "import json,sys,collections,re; c=collections.Counter(); [c.update([j['method']+' '+re.sub(r'/tables/[^/?]+', '/tables/{t}', j['path'].split('$DATASET',1)[1])]) for j in map(json.loads, sys.stdin)]; [print(f'  {n:6d} {k}') for k,n in c.most_common()]" || true
fi
python3 -c "import json; p=json.load(open('$WORK/plan.json')); print('tables_planned', len(p['tables']), 'orphaned', len(p.get('orphaned', [])))" 2>/dev/null \
  || tail -n 5 "$WORK/err"
