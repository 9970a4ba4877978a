#!/usr/bin/env bash
# Makes the PostGIS extension package available to the local PostgreSQL server (the geography
# tests create it in a scratch database of their own). Installs the Debian package matching the
# server's major version when it is missing; changes no server configuration.
#
#   scripts/postgis.sh
set -euo pipefail

log() { echo "postgis: $*" >&2; }

major=""
if [ -d /usr/lib/postgresql ]; then
    major=$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)
fi
if [ -z "$major" ]; then
    log "no local PostgreSQL server found; skipping (the geography tests will say what is missing)"
    exit 0
fi
if [ -f "/usr/share/postgresql/$major/extension/postgis.control" ]; then
    echo "PostGIS: available for PostgreSQL $major"
    exit 0
fi
package="postgresql-$major-postgis-3"
if [ "$(id -u)" != 0 ]; then
    log "PostGIS is missing; install it as root: apt-get install -y $package"
    exit 1
fi
if ! apt-cache policy "$package" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    log "apt-get update"
    apt-get update -q >/dev/null
fi
log "apt-get install -y $package"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null
echo "PostGIS: installed for PostgreSQL $major"
