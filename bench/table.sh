# The benchmark table of bench/compare.sh and bench/readers.sh: 25 mixed-type columns (ints,
# bigints, numerics, floats, text, dates, timestamps, bools, bytes), generated on the server.
# Sourced, not run:   bench_table ROWS [pg|my|both]
pg_cols="id bigint primary key, i1 int, i2 bigint, n1 numeric(12,2), n2 numeric(20,6), f1 double precision, f2 real, t1 text, t2 varchar(40), t3 text, d1 date, d2 date, ts1 timestamp, ts2 timestamptz, b1 boolean, b2 boolean, y1 bytea, i3 smallint, i4 int, n3 numeric(10,0), f3 double precision, t4 text, t5 varchar(10), ts3 timestamp, d3 date"
pg_gen="g, g % 1000, g::bigint * 7919, (g % 100000) / 100.0, g / 7.0, g * 0.5, (g % 1000) * 0.25, md5(g::text), 'name ' || g, repeat('x', g % 50), date '2020-01-01' + (g % 1000), date '1999-12-31' + (g % 50), timestamp '2024-01-01' + g * interval '1 second', timestamptz '2024-01-01 00:00:00+00' + g * interval '1 ms', g % 2 = 0, g % 3 = 0, decode(md5(g::text), 'hex'), (g % 30000)::smallint, -g, g % 1000000, sqrt(g), 'é' || g, left(md5(g::text), 10), timestamp '2000-01-01' + g * interval '1 minute', date '2030-01-01' - (g % 100)"
my_cols="id bigint primary key, i1 int, i2 bigint, n1 decimal(12,2), n2 decimal(20,6), f1 double, f2 float, t1 text, t2 varchar(40), t3 text, d1 date, d2 date, ts1 datetime(6), ts2 timestamp(3) NULL, b1 boolean, b2 boolean, y1 varbinary(16), i3 smallint, i4 int, n3 decimal(10,0), f3 double, t4 text, t5 varchar(10), ts3 datetime, d3 date"
my_gen="g, g % 1000, g * 7919, (g % 100000) / 100.0, g / 7.0, g * 0.5, (g % 1000) * 0.25, md5(g), concat('name ', g), repeat('x', g % 50), date '2020-01-01' + interval (g % 1000) day, date '1999-12-31' + interval (g % 50) day, timestamp '2024-01-01 00:00:00' + interval g second, timestamp '2024-01-01 00:00:00' + interval (g % 100000000) * 1000 microsecond, g % 2 = 0, g % 3 = 0, unhex(md5(g)), g % 30000, -g, g % 1000000, sqrt(g), concat('é', g), left(md5(g), 10), timestamp '2000-01-01 00:00:00' + interval g minute, date '2030-01-01' - interval (g % 100) day"

PG="psql -X -q -h 127.0.0.1 -U postgres -d postgres"
MY="mariadb -h 127.0.0.1 -u root"

bench_table() { # bench_table ROWS [pg|my|both]: (re)creates bench_cmp.t
  local rows=$1 which=${2:-both}
  if [ "$which" != my ]; then
    echo "generating $rows rows x 25 columns in PostgreSQL (bench_cmp.t)…" >&2
    $PG -c "DROP SCHEMA IF EXISTS bench_cmp CASCADE; CREATE SCHEMA bench_cmp; CREATE TABLE bench_cmp.t ($pg_cols); INSERT INTO bench_cmp.t SELECT $pg_gen FROM generate_series(1, $rows) g; ANALYZE bench_cmp.t;" 2>/dev/null
  fi
  if [ "$which" != pg ]; then
    echo "generating $rows rows x 25 columns in MariaDB (bench_cmp.t)…" >&2
    $MY -e "DROP DATABASE IF EXISTS bench_cmp; CREATE DATABASE bench_cmp; CREATE TABLE bench_cmp.t ($my_cols); INSERT INTO bench_cmp.t WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < $rows) SELECT $my_gen FROM s; ANALYZE TABLE bench_cmp.t;" --init-command="SET SESSION max_recursive_iterations = 100000000" >/dev/null
  fi
}

bench_drop() {
  $PG -c "DROP SCHEMA IF EXISTS bench_cmp CASCADE" >/dev/null 2>&1 || true
  $MY -e "DROP DATABASE IF EXISTS bench_cmp" || true
}

# bench_manifest FILE ENGINE FORMAT [EXTRA_DEFAULTS]: a dry-run manifest reading bench_cmp.t.
bench_manifest() {
  local source
  if [ "$2" = pg ]; then
    source="  pg:\n    type: postgres\n    url: postgres://postgres@127.0.0.1:5432/postgres\n    tables:\n      bench_cmp.t: {}\n"
  else
    source="  my:\n    type: mysql\n    url: mysql://root@127.0.0.1:3306/bench_cmp\n    tables:\n      t: {}\n"
  fi
  printf "bigquery:\n  project: bench-project\n  dataset: bench\n  endpoint: ${DATASYNC_TEST_BIGQUERY_URL:-http://127.0.0.1:9050}\n  emulator: true\n  create_dataset: true\ndefaults:\n  format: $3\n  max_parse_failures: -1\n${4:-}sources:\n$source" >"$1"
}
