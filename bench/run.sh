#!/usr/bin/env bash
# Extraction throughput: postgres (10 and 25 columns), mysql (25), sqlite (25).
#   bench/run.sh [rows]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
cargo build --release --example bench_extract >/dev/null
BIN=target/release/examples/bench_extract
printf '%-9s %5s %9s %9s %10s %8s %9s\n' engine cols rows secs rows/s MB/s peakMB
for run in "postgres 10" "postgres 25" "mysql 25" "sqlite 25"; do
  set -- $run
  line=$("$BIN" --engine "$1" --rows "$ROWS" --columns "$2")
  get() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$line"; }
  printf '%-9s %5s %9s %9s %10s %8s %9s\n' "$1" "$2" "$(get rows)" "$(get extract_s)" "$(get rows_per_s)" "$(get mb_per_s)" "$(get peak_rss_mb)"
done
