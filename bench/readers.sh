#!/usr/bin/env bash
# One table, 1 reader against 2 (issue 10, item 6): generates ROWS rows x 25 columns
# (bench/table.sh) in PostgreSQL and MariaDB, then runs ROUNDS interleaved rounds of
# `datasync apply --dry-run` (extract + encode as Avro, nothing uploaded) with
# `table_parallelism: 1` and `2`, the table split into chunks of CHUNK (default 256MiB).
# Prints the median wall time, datasync's CPU (user+sys), peak RSS, chunk count, how busy the
# whole box was (both cores, the database server's work included; from /proc/stat), and 2
# readers' speed-up.
# Not part of `cargo test`.
#
#   bench/readers.sh [ROWS] [ROUNDS]     (default 10000000 3)
#   ENGINES="pg" bench/readers.sh …      only PostgreSQL (default "pg my")
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-10000000}"
ROUNDS="${2:-3}"
CHUNK="${CHUNK:-256MiB}"
ENGINES="${ENGINES:-pg my}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
. bench/table.sh

cargo build --release --bin datasync >/dev/null
DS=target/release/datasync
case "$ENGINES" in *pg*) bench_table "$ROWS" pg ;; esac
case "$ENGINES" in *my*) bench_table "$ROWS" my ;; esac

for engine in $ENGINES; do
  for readers in 1 2; do
    bench_manifest "$WORK/$engine-$readers.yaml" "$engine" avro \
      "  chunk_bytes: $CHUNK\n  table_parallelism: $readers\n"
  done
done

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for engine in $ENGINES; do
    for readers in 1 2; do
      before=$(head -n1 /proc/stat)
      /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" \
        "$DS" -c "$WORK/$engine-$readers.yaml" apply --dry-run --format json >"$WORK/out" 2>/dev/null
      after=$(head -n1 /proc/stat)
      busy=$(python3 -c "import sys
b, a = ([int(x) for x in l.split()[1:]] for l in sys.argv[1:3])
d = [y - x for x, y in zip(b, a)]
print(round(100 * (1 - (d[3] + d[4]) / sum(d))))" "$before" "$after")
      read -r wall user sys rss <"$WORK/time"
      chunks=$(sed -n 's/.*"chunks": *\([0-9]*\).*/\1/p' "$WORK/out" | head -n1)
      rows=$(sed -n 's/.*"rows_extracted": *\([0-9]*\).*/\1/p' "$WORK/out" | head -n1)
      echo "$engine $readers $wall $(echo "$user + $sys" | bc) $rss ${chunks:-0} ${rows:-0} $busy" >>"$WORK/results"
    done
  done
done

python3 - "$WORK/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    engine, readers, wall, cpu, rss, chunks, rows, busy = line.split()
    runs[(engine, int(readers))].append((float(wall), float(cpu), int(rss), int(chunks), int(rows), int(busy)))
print(f"{'engine':<8}{'readers':>8}{'wall s':>8}{'cpu s':>8}{'rss MB':>8}{'chunks':>8}{'rows':>11}{'box busy':>9}{'speed-up':>10}")
for (engine, readers), r in sorted(runs.items()):
    wall, cpu, rss, busy = (statistics.median(v[i] for v in r) for i in (0, 1, 2, 5))
    one = statistics.median(v[0] for v in runs.get((engine, 1), r))
    print(f"{engine:<8}{readers:>8}{wall:>8.2f}{cpu:>8.2f}{rss/1024:>8.1f}{r[0][3]:>8}{r[0][4]:>11}{busy:>8.0f}%{one / wall:>10.2f}")
PY
bench_drop
