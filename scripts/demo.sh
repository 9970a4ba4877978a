#!/usr/bin/env bash
# The demo: seeds a small PostgreSQL shop, then validate -> plan -> apply -> plan against the
# local BigQuery emulator. The second plan shows no schema changes.
#
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh >/dev/null
BASE_URL=$(bash scripts/emulator.sh start)

export DATASYNC_DEMO_POSTGRES_URL="${DATASYNC_DEMO_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DATASYNC_DEMO_BIGQUERY_URL="$BASE_URL"
export NO_COLOR=1

psql -q "$DATASYNC_DEMO_POSTGRES_URL" -v ON_ERROR_STOP=1 -f demo/seed.sql
curl -s -X DELETE "$BASE_URL/bigquery/v2/projects/datasync-demo/datasets/shop?deleteContents=true" >/dev/null || true

cargo build -q
datasync=target/debug/datasync

step() { printf '\n\033[1m$ datasync %s\033[0m\n' "$*"; }
step -c demo/sync.yaml validate
"$datasync" -c demo/sync.yaml validate
step -c demo/sync.yaml plan
"$datasync" -c demo/sync.yaml plan
step -c demo/sync.yaml apply
"$datasync" -c demo/sync.yaml apply
step -c demo/sync.yaml plan --detailed-exitcode
"$datasync" -c demo/sync.yaml plan --detailed-exitcode
echo
echo "demo: BigQuery emulator at $BASE_URL, dataset datasync-demo.shop"
