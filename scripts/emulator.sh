#!/usr/bin/env bash
# Local BigQuery emulator (PyPI `bqemulator`) for datasync's tests.
#
#   scripts/emulator.sh [start|stop|status|install]     (default: start)
#
#   install  create .emulator/venv with bqemulator + numpy + the DuckDB spatial
#            extension (offline, from PyPI) copied into ~/.duckdb/extensions
#   start    install if needed, start the emulator in the background on
#            127.0.0.1, wait until its REST API answers, print the base URL
#            (only the URL goes to stdout: BASE=$(scripts/emulator.sh start))
#   stop     stop the emulator started by this script
#   status   print the base URL and exit 0 if it answers, else exit 1
#
# Environment:
#   DATASYNC_EMULATOR_PORT          REST port (default 9050)
#   DATASYNC_EMULATOR_GRPC_PORT     gRPC port (default REST port + 10)
#   DATASYNC_EMULATOR_PROJECT       default project id (default demo)
#   DATASYNC_EMULATOR_TIMEOUT       seconds to wait for startup (default 60)
#
# Files (git-ignored): .emulator/venv, .emulator/emulator.pid, .emulator/emulator.log
# (emulator-<port>.pid/.log when DATASYNC_EMULATOR_PORT is not 9050).
# The emulator is in-memory: every start begins with no datasets or tables.
# See scripts/EMULATOR.md for what the emulator does and does not do.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EMU_DIR="$ROOT/.emulator"
VENV="$EMU_DIR/venv"
PY="$VENV/bin/python"
PORT="${DATASYNC_EMULATOR_PORT:-9050}"
# one pid/log file per REST port, so instances on other ports do not collide
if [ "$PORT" = 9050 ]; then SUFFIX=""; else SUFFIX="-$PORT"; fi
PIDFILE="$EMU_DIR/emulator$SUFFIX.pid"
LOGFILE="$EMU_DIR/emulator$SUFFIX.log"
GRPC_PORT="${DATASYNC_EMULATOR_GRPC_PORT:-$((PORT + 10))}"
PROJECT="${DATASYNC_EMULATOR_PROJECT:-demo}"
TIMEOUT="${DATASYNC_EMULATOR_TIMEOUT:-60}"
HOST=127.0.0.1
BASE_URL="http://$HOST:$PORT"

# Pinned versions. duckdb must equal duckdb-extension-spatial's version: the
# spatial wheel ships an extension binary built for exactly one DuckDB release
# (newest on PyPI: 1.5.5, while bqemulator alone would pull duckdb 2.x).
BQEMULATOR_VERSION=1.4.0
DUCKDB_VERSION=1.5.5

log() { echo "emulator: $*" >&2; }
die() { echo "emulator: ERROR: $*" >&2; exit 1; }

healthy() {
    curl -fsS --max-time 2 "$BASE_URL/readyz" >/dev/null 2>&1
}

pid_alive() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# ---------------------------------------------------------------- install

spatial_target_dir() { # prints ~/.duckdb/extensions/v<ver>/<platform>
    "$PY" - <<'PY'
import os, duckdb
platform = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
print(os.path.join(os.path.expanduser("~"), ".duckdb", "extensions",
                   "v" + duckdb.__version__, platform))
PY
}

spatial_loads() { extension_loads spatial; }

extension_loads() { # extension_loads NAME
    "$PY" -c "import duckdb; c = duckdb.connect(); c.execute('LOAD $1')" >/dev/null 2>&1
}

installed() {
    [ -x "$VENV/bin/bqemulator" ] || return 1
    "$PY" - <<PY >/dev/null 2>&1 || return 1
import importlib.metadata as m
assert m.version("bqemulator") == "$BQEMULATOR_VERSION"
assert m.version("duckdb") == m.version("duckdb-extension-spatial")
assert m.version("duckdb") == m.version("duckdb-extension-avro")
import numpy, fastavro, cramjam
PY
    spatial_loads && extension_loads avro
}

# install_extension NAME: copies NAME.duckdb_extension from the PyPI wheel
# duckdb-extension-NAME (same version as duckdb) into ~/.duckdb/extensions,
# where `INSTALL NAME` finds it without the network.
install_extension() {
    local name=$1 duck version src dir
    duck=$("$PY" -c 'import duckdb; print(duckdb.__version__)')
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('duckdb-extension-$name'))")
    [ "$duck" = "$version" ] || die "duckdb $duck != duckdb-extension-$name $version"
    src=$("$PY" - "$name" <<'PY'
import importlib, os, sys, duckdb
name = sys.argv[1]
pkg = importlib.import_module("duckdb_extension_" + name)
root = os.path.dirname(pkg.__file__)
want = os.path.join(root, "extensions", "v" + duckdb.__version__, name + ".duckdb_extension")
if not os.path.isfile(want):
    raise SystemExit("no " + want)
print(want)
PY
) || die "$name extension file not found in duckdb-extension-$name"
    dir=$(spatial_target_dir)
    mkdir -p "$dir"
    if ! cmp -s "$src" "$dir/$name.duckdb_extension"; then
        cp "$src" "$dir/$name.duckdb_extension.tmp"
        mv "$dir/$name.duckdb_extension.tmp" "$dir/$name.duckdb_extension"
    fi
    extension_loads "$name" || die "DuckDB cannot LOAD $name from $dir"
    log "$name extension $duck installed in $dir"
}

install_spatial_extension() { install_extension spatial; }

do_install() {
    mkdir -p "$EMU_DIR"
    if installed; then
        log "already installed in $VENV"
        return 0
    fi
    if [ ! -x "$PY" ]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    log "pip install bqemulator==$BQEMULATOR_VERSION duckdb==$DUCKDB_VERSION duckdb-extension-spatial==$DUCKDB_VERSION duckdb-extension-avro==$DUCKDB_VERSION numpy fastavro cramjam"
    "$PY" -m pip install -q --disable-pip-version-check \
        "bqemulator==$BQEMULATOR_VERSION" \
        "duckdb==$DUCKDB_VERSION" \
        "duckdb-extension-spatial==$DUCKDB_VERSION" \
        "duckdb-extension-avro==$DUCKDB_VERSION" \
        numpy fastavro cramjam >&2
    # bqemulator runs `INSTALL spatial; LOAD spatial` at startup and refuses
    # to start without it; with no network that only works from the local
    # extension directory.
    install_spatial_extension
    # Avro loads go through DuckDB's read_avro (decimal-logical files through
    # fastavro); bqemulator runs `INSTALL avro; LOAD avro` at startup when
    # BQEMU_ENABLE_FORMAT_EXTENSIONS is true, which offline needs this copy.
    install_extension avro
    installed || die "install finished but the venv check failed"
    log "installed bqemulator $BQEMULATOR_VERSION in $VENV"
}

# ---------------------------------------------------------------- start/stop

do_start() {
    if pid_alive && healthy; then
        log "already running (pid $(cat "$PIDFILE"))"
        echo "$BASE_URL"
        return 0
    fi
    if healthy; then
        log "something already answers on $BASE_URL/readyz (not started by this script); using it"
        echo "$BASE_URL"
        return 0
    fi
    if pid_alive; then
        log "pid $(cat "$PIDFILE") is alive but not healthy; stopping it"
        do_stop
    fi
    if ! installed; then
        do_install
    fi
    # spatial must also be present for this user's $HOME (e.g. venv copied)
    spatial_loads || install_spatial_extension
    extension_loads avro || install_extension avro

    mkdir -p "$EMU_DIR"
    log "starting bqemulator on $BASE_URL (grpc $HOST:$GRPC_PORT, project $PROJECT), log $LOGFILE"
    {
        echo "---- $(date -u +%Y-%m-%dT%H:%M:%SZ) start port=$PORT grpc=$GRPC_PORT project=$PROJECT"
    } >>"$LOGFILE"
    # BQEMU_ENABLE_FORMAT_EXTENSIONS=true: `INSTALL avro; LOAD avro` at start,
    # which finds the extension copied from duckdb-extension-avro (no download).
    BQEMU_ENABLE_FORMAT_EXTENSIONS=true \
        setsid "$VENV/bin/bqemulator" start \
        --rest-host "$HOST" --rest-port "$PORT" \
        --grpc-host "$HOST" --grpc-port "$GRPC_PORT" \
        --ephemeral --project "$PROJECT" \
        --log-level info --log-format json \
        </dev/null >>"$LOGFILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDFILE"

    local deadline=$((SECONDS + TIMEOUT))
    until healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            tail -n 30 "$LOGFILE" >&2 || true
            die "bqemulator exited during startup (see $LOGFILE)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$LOGFILE" >&2 || true
            do_stop
            die "bqemulator did not answer $BASE_URL/readyz within ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "running (pid $pid)"
    echo "$BASE_URL"
}

do_stop() {
    if ! [ -f "$PIDFILE" ]; then
        log "not running (no $PIDFILE)"
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        log "pid $pid not running"
    fi
    rm -f "$PIDFILE"
}

do_status() {
    if healthy; then
        if pid_alive; then
            log "running (pid $(cat "$PIDFILE"))"
        else
            log "running (not started by this script)"
        fi
        echo "$BASE_URL"
        return 0
    fi
    if pid_alive; then
        log "pid $(cat "$PIDFILE") alive but $BASE_URL/readyz does not answer"
    else
        log "not running"
    fi
    return 1
}

case "${1:-start}" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    install) do_install ;;
    restart) do_stop; do_start ;;
    -h | --help | help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (use start|stop|status|install)" ;;
esac
