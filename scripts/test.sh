#!/usr/bin/env bash
# Runs every datasync test against real services: PostgreSQL and MariaDB on loopback
# (installed and started if missing), OpenSSH's sshd binary (installed if missing; the SSH
# tunnel tests start their own on loopback) and the BigQuery emulator in a project-local venv.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh postgres mariadb ssh
bash scripts/postgis.sh
bash scripts/emulator.sh start

export DATASYNC_TEST_POSTGRES_URL="${DATASYNC_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DATASYNC_TEST_MYSQL_URL="${DATASYNC_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"
export DATASYNC_TEST_BIGQUERY_URL="${DATASYNC_TEST_BIGQUERY_URL:-http://127.0.0.1:${DATASYNC_EMULATOR_PORT:-9050}}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --features services --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line with the totals of every test binary.
grep -E '^test result: ' "$log" \
  | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
  | awk '{ passed += $1; failed += $2 } END { printf "tests: %d passed, %d failed\n", passed, failed }'
exit "$status"
