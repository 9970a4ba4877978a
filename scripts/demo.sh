#!/usr/bin/env bash
# The demo: validate -> plan -> apply -> plan into the local BigQuery emulator. The second plan
# shows no schema changes.
#
#   scripts/demo.sh            # default: the SQLite shop shipped in demo/shop.db (no database server)
#   scripts/demo.sh postgres   # the same shop seeded into PostgreSQL (demo/seed.sql, demo/sync.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${1:-sqlite}"
BASE_URL=$(bash scripts/emulator.sh start)
export DATASYNC_DEMO_BIGQUERY_URL="$BASE_URL"
export NO_COLOR=1

case "$engine" in
sqlite)
    manifest=demo/sqlite.yaml
    dataset=shop_sqlite
    # A copy, so the shipped sample never changes.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp demo/shop.db "$work/shop.db"
    export DATASYNC_DEMO_SQLITE="$work/shop.db"
    ;;
postgres)
    manifest=demo/sync.yaml
    dataset=shop
    # Only PostgreSQL: the demo does not need (or install) MariaDB.
    bash scripts/services.sh postgres >/dev/null
    export DATASYNC_DEMO_POSTGRES_URL="${DATASYNC_DEMO_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    psql -q "$DATASYNC_DEMO_POSTGRES_URL" -v ON_ERROR_STOP=1 -f demo/seed.sql
    ;;
*)
    echo "usage: scripts/demo.sh [sqlite|postgres]" >&2
    exit 1
    ;;
esac
curl -s -X DELETE "$BASE_URL/bigquery/v2/projects/datasync-demo/datasets/$dataset?deleteContents=true" >/dev/null || true

cargo build -q
datasync=target/debug/datasync

step() { printf '\n\033[1m$ datasync %s\033[0m\n' "$*"; }
step -c "$manifest" validate
"$datasync" -c "$manifest" validate
step -c "$manifest" plan
"$datasync" -c "$manifest" plan
step -c "$manifest" apply
"$datasync" -c "$manifest" apply
step -c "$manifest" plan --detailed-exitcode
"$datasync" -c "$manifest" plan --detailed-exitcode
echo
echo "demo: BigQuery emulator at $BASE_URL, dataset datasync-demo.$dataset"
