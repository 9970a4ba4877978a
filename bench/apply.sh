#!/usr/bin/env bash
# End-to-end apply throughput: PostgreSQL -> BigQuery emulator, release build.
#   bench/apply.sh [rows]      (default 1000000)
# Prints wall time, rows/s and the client's peak RSS. The emulator (DuckDB) is usually the
# bottleneck; see bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
bash scripts/services.sh >/dev/null
BASE_URL=$(bash scripts/emulator.sh start)
PG="${DATASYNC_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build --release -q
psql -q "$PG" -v ON_ERROR_STOP=1 <<SQL
DROP SCHEMA IF EXISTS datasync_bench CASCADE;
CREATE SCHEMA datasync_bench;
CREATE TABLE datasync_bench.wide AS
SELECT g::int8 AS id, md5(g::text) AS name, (g % 1000)::int4 AS qty, (g * 1.2345)::numeric(14,4) AS amount,
       g % 2 = 0 AS flag, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS at,
       date '2024-01-01' + (g % 3650) AS day, g / 7.0::float8 AS ratio,
       jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b')) AS doc, md5(g::text)::uuid AS ref
FROM generate_series(1, $ROWS) AS g;
ALTER TABLE datasync_bench.wide ADD PRIMARY KEY (id);
ANALYZE datasync_bench.wide;
SQL
curl -s -X DELETE "$BASE_URL/bigquery/v2/projects/datasync-bench/datasets/bench?deleteContents=true" >/dev/null || true
MANIFEST=$(mktemp --suffix .yaml)
cat > "$MANIFEST" <<YAML
bigquery: {project: datasync-bench, dataset: bench, endpoint: "$BASE_URL", create_dataset: true}
sources:
  pg:
    type: postgres
    url: $PG
    schema: datasync_bench
    tables: {wide: {}}
YAML
/usr/bin/time -f 'wall_s=%e peak_rss_mb=%M' -o /tmp/datasync-bench-time target/release/datasync -c "$MANIFEST" apply --format json > /tmp/datasync-bench-report.json
read -r WALL RSS < <(sed -e 's/wall_s=//' -e 's/peak_rss_mb=//' /tmp/datasync-bench-time)
RSS_MB=$((RSS / 1024))
echo "apply postgres -> emulator: rows=$ROWS wall_s=$WALL rows_per_s=$(python3 -c "print(int($ROWS/$WALL))") peak_rss_mb=$RSS_MB"
psql -q "$PG" -c "DROP SCHEMA datasync_bench CASCADE"
curl -s -X DELETE "$BASE_URL/bigquery/v2/projects/datasync-bench/datasets/bench?deleteContents=true" >/dev/null || true
rm -f "$MANIFEST"
