#!/usr/bin/env bash
# `plan` over many tables (issue 10, item 5): creates N small tables in PostgreSQL (schema
# bench_many) and, with TARGETS=1, their targets in the BigQuery emulator, then times
# `datasync plan` over all of them. Not part of `cargo test`.
#
#   bench/plan_many.sh [N]                 (default 10000)
#   TARGETS=1 bench/plan_many.sh 10000     also create the targets (slow on the emulator)
#   DATASYNC_TEST_BIGQUERY_URL=http://127.0.0.1:9050 (default)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
BQ="${DATASYNC_TEST_BIGQUERY_URL:-http://127.0.0.1:9050}"
PG="psql -X -q -h 127.0.0.1 -U postgres -d postgres"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release --bin datasync >/dev/null
DS=target/release/datasync
DATASET="plan_many_$$"

echo "creating $N tables in PostgreSQL…" >&2
$PG -c "DROP SCHEMA IF EXISTS bench_many CASCADE; CREATE SCHEMA bench_many;"
$PG -c "DO \$\$ BEGIN FOR i IN 1..$N LOOP EXECUTE format('CREATE TABLE bench_many.t%s (id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz)', i); END LOOP; END \$\$;"

{
  printf "bigquery:\n  project: datasync-test\n  dataset: %s\n  endpoint: %s\n  emulator: true\n  create_dataset: true\n" "$DATASET" "$BQ"
  printf "defaults:\n  parallelism: 8\nsources:\n  pg:\n    type: postgres\n    url: postgres://postgres@127.0.0.1:5432/postgres\n    tables:\n"
  for i in $(seq 1 "$N"); do printf "      bench_many.t%s: {}\n" "$i"; done
} >"$WORK/sync.yaml"

if [ "${TARGETS:-0}" = 1 ]; then
  echo "creating the targets with apply (emulator)…" >&2
  GCE_METADATA_HOST=127.0.0.1:9 "$DS" -c "$WORK/sync.yaml" apply >/dev/null 2>&1 || true
fi

echo "timing plan over $N tables…" >&2
/usr/bin/time -f 'plan_wall_s=%e cpu_s=%U+%S peak_rss_kb=%M' \
  env GCE_METADATA_HOST=127.0.0.1:9 "$DS" -c "$WORK/sync.yaml" plan --format json >"$WORK/plan.json" 2>"$WORK/err" || true
tail -n 1 "$WORK/err"
python3 -c "import json,sys; p=json.load(open('$WORK/plan.json')); print('tables_planned', len(p['tables']))" 2>/dev/null || tail -n 5 "$WORK/err"
$PG -c "DROP SCHEMA bench_many CASCADE" >/dev/null
curl -s -X DELETE "$BQ/bigquery/v2/projects/datasync-test/datasets/$DATASET?deleteContents=true" >/dev/null || true
