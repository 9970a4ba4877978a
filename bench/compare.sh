#!/usr/bin/env bash
# Side-by-side extraction benchmark (issue 10, item 6): one generated table of ROWS rows x 25
# mixed-type columns in PostgreSQL and in MariaDB, then ROUNDS interleaved rounds of
#   pg-csv      psql  \copy (SELECT …) TO … CSV
#   pg-binary   psql  \copy (SELECT …) TO … (FORMAT binary)   (the physical floor)
#   my-batch    mariadb --batch --quick                       (MariaDB's raw export)
#   ds-avro     datasync apply --dry-run, format: avro        (extract + encode, no upload)
#   ds-ndjson   datasync apply --dry-run, format: ndjson
#   ds-avro-2r  datasync, format: avro, chunk_bytes: 64MiB, table_parallelism: 2
#   sling       sling run … --tgt-object file://…csv          (if `sling` is in bench/.venv)
#   dlt         dlt pipeline to local parquet files           (if `dlt` is in bench/.venv)
# printing wall time, CPU (user+sys), peak RSS and output bytes per case (median over rounds),
# and each case's ratio to its engine's raw export. Nothing here is part of `cargo test`.
#
#   bench/compare.sh [ROWS] [ROUNDS]        (default 1000000 3)
#   BENCH_PEERS=1 bench/compare.sh           also installs sling and dlt into bench/.venv (PyPI)
#
# Needs psql and mariadb clients, /usr/bin/time, PostgreSQL 127.0.0.1:5432 (postgres, trust) and
# MariaDB 127.0.0.1:3306 (root, no password).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
ROUNDS="${2:-3}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

. bench/table.sh
cargo build --release --bin datasync >/dev/null
DS=target/release/datasync

# sling: the PyPI package `sling` downloads its binary from GitHub at first use; the platform
# wheel `sling-linux-amd64` carries it, so the bench installs that and runs the binary directly.
SLING=bench/.venv/lib/python3.11/site-packages/sling_linux_amd64/bin/sling-linux-amd64
if [ "${BENCH_PEERS:-0}" = 1 ] && [ ! -x bench/.venv/bin/dlt ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q sling-linux-amd64 'dlt[parquet]' sqlalchemy 'psycopg[binary]' pymysql
fi
[ -f "$SLING" ] && chmod +x "$SLING"

bench_table "$ROWS"

manifest() { # manifest ENGINE FORMAT [EXTRA_DEFAULTS]
  local file="$WORK/$1-$2${3:+-extra}.yaml"
  bench_manifest "$file" "$1" "$2" "${3:-}"
  echo "$file"
}

# run NAME COMMAND…: one measured run; appends "name wall cpu rss_kb bytes" to $WORK/results.
run() {
  local name=$1; shift
  local out="$WORK/out.$name"
  rm -rf "$out"
  /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" bash -c "$*" >/dev/null 2>"$WORK/err" || {
    echo "  $name failed: $(tail -n 3 "$WORK/err")" >&2; return 0; }
  local bytes
  bytes=$(if [ -e "$out" ]; then du -sb "$out" | cut -f1; else
    sed -n 's/.*"bytes": *\([0-9]*\).*/\1/p' "$WORK/err" | head -n1; fi)
  read -r wall user sys rss <"$WORK/time"
  echo "$name $wall $(echo "$user + $sys" | bc) $rss ${bytes:-0}" >>"$WORK/results"
}

cases() {
  run pg-csv "$PG -c \"\\copy (SELECT * FROM bench_cmp.t) TO '$WORK/out.pg-csv' CSV\""
  run pg-binary "$PG -c \"\\copy (SELECT * FROM bench_cmp.t) TO '$WORK/out.pg-binary' (FORMAT binary)\""
  run my-batch "$MY --batch --quick -e 'SELECT * FROM bench_cmp.t' > '$WORK/out.my-batch'"
  for engine in pg my; do
    for format in avro ndjson; do
      run "ds-$engine-$format" "$DS -c $(manifest $engine $format) apply --dry-run --format json 1>&2 2>/dev/null"
    done
    # The same table in chunks of 64 MiB on disk, read by 2 readers under one snapshot.
    run "ds-$engine-avro-2r" "$DS -c $(manifest $engine avro "  chunk_bytes: 64MiB\n  table_parallelism: 2\n") apply --dry-run --format json 1>&2 2>/dev/null"
  done
  if [ -x "$SLING" ]; then
    run pg-sling "SLING_THREADS=1 $SLING run --src-conn 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable' --src-stream bench_cmp.t --tgt-object 'file://$WORK/out.pg-sling/t.csv'"
    run my-sling "$SLING run --src-conn 'mysql://root@127.0.0.1:3306/bench_cmp' --src-stream bench_cmp.t --tgt-object 'file://$WORK/out.my-sling/t.csv'"
  fi
  if [ -x bench/.venv/bin/dlt ]; then
    # dlt's pyarrow backend infers each batch's Arrow schema; on MariaDB the batches differ
    # and dlt refuses to write them into one file unless told to promote types.
    export DATA_WRITER__ARROW_CONCAT_PROMOTE_OPTIONS=permissive
    run pg-dlt "bench/.venv/bin/python bench/dlt_export.py postgresql://postgres@127.0.0.1:5432/postgres bench_cmp t '$WORK/out.pg-dlt'"
    run my-dlt "bench/.venv/bin/python bench/dlt_export.py mysql+pymysql://root@127.0.0.1:3306/bench_cmp bench_cmp t '$WORK/out.my-dlt'"
  fi
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  cases
done

# Median per case, ratio to the engine's raw export (pg: COPY binary; my: mariadb --batch).
python3 - "$WORK/results" "$ROWS" <<'PY'
import statistics, sys, collections
rows = int(sys.argv[2])
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, wall, cpu, rss, size = line.split()
    runs[name].append((float(wall), float(cpu), int(rss), int(size)))
med = {n: tuple(statistics.median(v[i] for v in r) for i in range(4)) for n, r in runs.items()}
base = lambda n: med.get("pg-binary" if n.startswith(("pg", "ds-pg")) else "my-batch")
print(f"{'case':<14}{'wall s':>8}{'cpu s':>8}{'rss MB':>8}{'out MB':>9}{'B/row':>7}{'x raw':>7}")
for name, (wall, cpu, rss, size) in med.items():
    b = base(name)
    ratio = wall / b[0] if b and b[0] else float("nan")
    print(f"{name:<14}{wall:>8.2f}{cpu:>8.2f}{rss/1024:>8.1f}{size/1e6:>9.1f}{size/rows:>7.0f}{ratio:>7.2f}")
print()
for engine in ("pg", "my"):
    for peer in ("sling", "dlt", "binary" if engine == "pg" else "batch"):
        if f"{engine}-{peer}" not in med:
            continue
        names = [n for n in med if n.startswith(f"ds-{engine}-")]
        if peer in ("sling", "dlt"):
            names.append("pg-binary" if engine == "pg" else "my-batch")
        for name in names:
            print(f"{engine}-{peer} / {name}: {med[f'{engine}-{peer}'][0] / med[name][0]:.2f}x")
PY
bench_drop
