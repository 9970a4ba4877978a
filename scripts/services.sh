#!/usr/bin/env bash
# Ensure PostgreSQL and MariaDB are reachable on 127.0.0.1 for datasync's
# integration tests. Idempotent: safe to run any number of times.
#
#   scripts/services.sh [postgres] [mariadb] [ssh]     (default: postgres and mariadb)
#
# `ssh` only installs OpenSSH's server binary (/usr/sbin/sshd, Debian's openssh-server) for the
# SSH tunnel tests, which start their own sshd on a free loopback port with a generated config
# and host key. It never starts or reconfigures the system's sshd (a policy-rc.d keeps the
# package from starting it while it installs).
#
# - reachable already      -> prints one line per service, changes nothing
# - installed but stopped  -> starts it (needs root)
# - not installed          -> apt-get installs + configures it (needs root)
# - not root and missing   -> prints what to install, exits 1
#
# It only ever reconfigures (trust auth in pg_hba.conf, MariaDB root without a password) a
# server it installed itself (marked in $MARKERS). A server that was already on the machine
# and does not accept those logins is left alone: the script says what to change and exits 1.
#
# Afterwards it waits (bounded, DATASYNC_SERVICES_TIMEOUT seconds, default 30)
# until both accept connections and prints their URLs:
#   postgres://postgres@127.0.0.1:5432/postgres
#   mysql://root@127.0.0.1:3306/test
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
MY_HOST=127.0.0.1
MY_PORT=3306
TIMEOUT="${DATASYNC_SERVICES_TIMEOUT:-30}"

PG_URL="postgres://postgres@${PG_HOST}:${PG_PORT}/postgres"
MY_URL="mysql://root@${MY_HOST}:${MY_PORT}/test"

MARKERS="${DATASYNC_SERVICES_MARKERS:-/var/lib/datasync-services}"

log() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------- probes

tcp_open() { # host port
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

pg_up() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

# Can we log in as postgres over TCP without a password?
pg_login_ok() {
    command -v psql >/dev/null 2>&1 || return 1
    PGCONNECT_TIMEOUT=3 psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -tAc 'SELECT 1' >/dev/null 2>&1
}

my_admin() {
    if command -v mariadb-admin >/dev/null 2>&1; then
        mariadb-admin "$@"
    else
        mysqladmin "$@"
    fi
}

my_client() {
    if command -v mariadb >/dev/null 2>&1; then
        mariadb "$@"
    else
        mysql "$@"
    fi
}

my_up() {
    if command -v mariadb-admin >/dev/null 2>&1 || command -v mysqladmin >/dev/null 2>&1; then
        # exit status is 0 whenever the server runs (even on access denied)
        my_admin -h"$MY_HOST" -P"$MY_PORT" -uroot --connect-timeout=2 ping >/dev/null 2>&1
    else
        tcp_open "$MY_HOST" "$MY_PORT"
    fi
}

# Can we log in as root over TCP with an empty password and see db `test`?
my_login_ok() {
    { command -v mariadb >/dev/null 2>&1 || command -v mysql >/dev/null 2>&1; } || return 1
    my_client -h"$MY_HOST" -P"$MY_PORT" -uroot --connect-timeout=3 -e 'USE test; SELECT 1' \
        >/dev/null 2>&1
}

wait_for() { # name probe-fn
    local name=$1 fn=$2 deadline=$((SECONDS + TIMEOUT))
    until "$fn"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "$name did not accept connections within ${TIMEOUT}s"
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------- detection

# shellcheck disable=SC2012  # version directories are plain numbers
pg_version() { # newest configured cluster version, or newest installed server
    local v=""
    if [ -d /etc/postgresql ]; then
        v=$(ls -1 /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    fi
    if [ -z "$v" ] && [ -d /usr/lib/postgresql ]; then
        v=$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)
    fi
    echo "$v"
}

pg_installed() {
    local v
    v=$(pg_version)
    [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/postgres" ] && command -v pg_ctlcluster >/dev/null 2>&1
}

my_daemon() {
    local d
    for d in /usr/sbin/mariadbd /usr/sbin/mysqld; do
        if [ -x "$d" ]; then echo "$d"; return 0; fi
    done
    return 1
}

my_installed() { my_daemon >/dev/null; }

# ---------------------------------------------------------------- ownership

# Records that this script installed (and so may configure) a server.
mark_ours() { mkdir -p "$MARKERS" && touch "$MARKERS/$1"; }
is_ours() { [ -f "$MARKERS/$1" ]; }

# ---------------------------------------------------------------- install

APT_UPDATED=0
apt_install() {
    is_root || die "internal: apt_install needs root"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

pg_configure() {
    # trust auth for local + loopback, listen on loopback, database `test`.
    local v conf hba
    v=$(pg_version)
    conf="/etc/postgresql/$v/main"
    hba="$conf/pg_hba.conf"
    [ -f "$hba" ] || die "PostgreSQL: $hba not found"

    if ! grep -q '^# datasync: trust' "$hba"; then
        log "PostgreSQL: enabling trust auth for local and 127.0.0.1 in $hba"
        local tmp
        tmp=$(mktemp)
        {
            echo '# datasync: trust (added by scripts/services.sh; first match wins)'
            echo 'local   all   all                  trust'
            echo 'host    all   all   127.0.0.1/32   trust'
            echo 'host    all   all   ::1/128        trust'
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
    mkdir -p "$conf/conf.d"
    if [ ! -f "$conf/conf.d/datasync.conf" ]; then
        echo "listen_addresses = '127.0.0.1'" >"$conf/conf.d/datasync.conf"
        echo "port = $PG_PORT" >>"$conf/conf.d/datasync.conf"
        chown -R postgres:postgres "$conf/conf.d" 2>/dev/null || true
    fi
}

pg_start() {
    local v
    v=$(pg_version)
    if [ ! -d "/etc/postgresql/$v/main" ]; then
        log "PostgreSQL: creating cluster $v/main"
        pg_createcluster "$v" main >/dev/null
        mark_ours postgres
        pg_configure
    fi
    log "PostgreSQL: starting cluster $v/main"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
}

pg_restart() {
    local v
    v=$(pg_version)
    pg_ctlcluster --skip-systemctl-redirect "$v" main restart
}

pg_ensure_test_db() {
    if ! psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1; then
        log "PostgreSQL: creating database test"
        psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null
    fi
}

ensure_postgres() {
    if pg_up; then
        if pg_login_ok; then
            echo "PostgreSQL: already running on $PG_HOST:$PG_PORT"
            return 0
        fi
        is_ours postgres || die "PostgreSQL runs on $PG_HOST:$PG_PORT but user postgres cannot log in without a password; this script did not install it and will not change its authentication. Point DATASYNC_TEST_POSTGRES_URL at a user that can log in, or allow one yourself (e.g. 'host all all 127.0.0.1/32 trust' in pg_hba.conf)"
        is_root || die "PostgreSQL runs on $PG_HOST:$PG_PORT but user postgres cannot log in without a password; re-run this script as root"
        log "PostgreSQL: running, but postgres cannot log in over TCP; configuring"
        pg_configure
        pg_restart
    else
        if ! pg_installed; then
            if ! is_root; then
                die "PostgreSQL is not installed. Install it as root: apt-get install -y postgresql (then re-run this script as root to configure trust auth on 127.0.0.1 and create database test)"
            fi
            apt_install postgresql postgresql-client
            pg_installed || die "PostgreSQL: install did not provide a server"
            mark_ours postgres
            if [ ! -d "/etc/postgresql/$(pg_version)/main" ]; then
                pg_createcluster "$(pg_version)" main >/dev/null
            fi
            pg_configure
        else
            is_root || die "PostgreSQL is installed but not running; start it as root: pg_ctlcluster --skip-systemctl-redirect $(pg_version) main start"
        fi
        pg_start
    fi
    wait_for PostgreSQL pg_up
    if ! pg_login_ok; then
        is_ours postgres || die "PostgreSQL: postgres cannot log in over TCP without a password; this script did not install this server and will not change its authentication"
        is_root || die "PostgreSQL: postgres cannot log in over TCP without a password"
        pg_configure
        pg_restart
        wait_for PostgreSQL pg_up
        pg_login_ok || die "PostgreSQL: postgres still cannot log in over TCP after configuring trust auth"
    fi
    echo "PostgreSQL: running on $PG_HOST:$PG_PORT"
}

# ---------------------------------------------------------------- MariaDB

my_prepare_dirs() {
    mkdir -p /run/mysqld
    if id mysql >/dev/null 2>&1; then
        chown mysql:mysql /run/mysqld
    fi
    chmod 755 /run/mysqld
}

my_start() {
    local d
    d=$(my_daemon)
    my_prepare_dirs
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "MariaDB: initialising data directory"
        if command -v mariadb-install-db >/dev/null 2>&1; then
            mariadb-install-db --user=mysql >/dev/null
        else
            mysql_install_db --user=mysql >/dev/null
        fi
    fi
    log "MariaDB: starting $d"
    start-stop-daemon --start --oknodo --background --exec "$d" -- --user=mysql
}

my_configure() {
    # root@localhost / root@127.0.0.1 with an empty password over TCP (socket
    # auth kept as an alternative), database `test`. Runs through the unix
    # socket as OS root.
    log "MariaDB: configuring root with empty password over TCP, database test"
    my_client -uroot --protocol=socket <<'SQL'
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS test;
FLUSH PRIVILEGES;
SQL
}

ensure_mariadb() {
    if my_up; then
        if my_login_ok; then
            echo "MariaDB: already running on $MY_HOST:$MY_PORT"
            return 0
        fi
        is_ours mariadb || die "MariaDB runs on $MY_HOST:$MY_PORT but root cannot log in with an empty password (or database test is missing); this script did not install it and will not open its root account. Point DATASYNC_TEST_MYSQL_URL at a user that can log in"
        is_root || die "MariaDB runs on $MY_HOST:$MY_PORT but root cannot log in with an empty password (or database test is missing); re-run this script as root"
        my_configure
    else
        if ! my_installed; then
            if ! is_root; then
                die "MariaDB is not installed. Install it as root: apt-get install -y mariadb-server (then re-run this script as root to allow root with an empty password over 127.0.0.1 and create database test)"
            fi
            apt_install mariadb-server mariadb-client
            my_installed || die "MariaDB: install did not provide a server"
            mark_ours mariadb
            my_start
            wait_for MariaDB my_up
            my_configure
        else
            is_root || die "MariaDB is installed but not running; start it as root: start-stop-daemon --start --oknodo --background --exec $(my_daemon) -- --user=mysql"
            my_start
        fi
    fi
    wait_for MariaDB my_up
    if ! my_login_ok; then
        # the server may still be finishing its startup; give it the timeout
        local deadline=$((SECONDS + TIMEOUT))
        until my_login_ok || [ "$SECONDS" -ge "$deadline" ]; do sleep 1; done
    fi
    if ! my_login_ok; then
        is_ours mariadb || die "MariaDB: root cannot log in over TCP with an empty password; this script did not install this server and will not open its root account"
        is_root || die "MariaDB: root cannot log in over TCP with an empty password"
        my_configure
        my_login_ok || die "MariaDB: root still cannot log in over TCP after configuring"
    fi
    echo "MariaDB: running on $MY_HOST:$MY_PORT"
}

# ---------------------------------------------------------------- OpenSSH server (tests only)

SSHD=/usr/sbin/sshd

ensure_sshd() {
    if [ -x "$SSHD" ]; then
        echo "OpenSSH server: $SSHD is installed (the tests start their own on loopback)"
        return 0
    fi
    is_root || die "OpenSSH's sshd is not installed. Install it as root: apt-get install -y openssh-server (the SSH tunnel tests start their own sshd; the system's is not needed)"
    # policy-rc.d 101: the package must not start (or restart) the system's sshd while it
    # installs; the tests run their own. Removed again right after.
    local policy=/usr/sbin/policy-rc.d had_policy=0
    if [ -e "$policy" ]; then had_policy=1; fi
    if [ "$had_policy" -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
    fi
    apt_install openssh-server
    if [ "$had_policy" -eq 0 ]; then rm -f "$policy"; fi
    [ -x "$SSHD" ] || die "OpenSSH server: install did not provide $SSHD"
    mark_ours sshd
    echo "OpenSSH server: installed $SSHD (not started; the tests start their own on loopback)"
}

# ---------------------------------------------------------------- main

want_pg=0
want_my=0
want_ssh=0
[ "$#" -eq 0 ] && set -- postgres mariadb
for service in "$@"; do
    case "$service" in
    postgres | postgresql) want_pg=1 ;;
    mariadb | mysql) want_my=1 ;;
    ssh | sshd) want_ssh=1 ;;
    *) die "unknown service $service (use postgres, mariadb and/or ssh)" ;;
    esac
done

[ "$want_ssh" -eq 1 ] && ensure_sshd

if [ "$want_pg" -eq 1 ]; then
    ensure_postgres
    pg_ensure_test_db
fi
[ "$want_my" -eq 1 ] && ensure_mariadb

[ "$want_pg" -eq 1 ] && echo "$PG_URL"
[ "$want_my" -eq 1 ] && echo "$MY_URL"
exit 0
