#!/usr/bin/env bash
# Builds the image from the Dockerfile and checks it: the binary runs, the user is not root,
# the example manifest validates inside the container; prints the image size.
# Without Docker (no client or no daemon) it says so and exits 0, so CI can always run it.
#   scripts/docker-build.sh [TAG]        (default datasync:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-datasync:dev}"
if ! command -v docker >/dev/null 2>&1; then
  echo "docker-build: skipped (no docker client)"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "docker-build: skipped (the Docker daemon is not reachable)"
  exit 0
fi
docker build --tag "$tag" .
version="$(docker run --rm "$tag" --version)"
echo "docker-build: $version"
user="$(docker image inspect --format '{{.Config.User}}' "$tag")"
case "$user" in
  ""|root|0|0:0|root:root) echo "docker-build: the image runs as root ($user)" >&2; exit 1 ;;
esac
docker run --rm -e SHOP_DB_PASSWORD=x -e WAREHOUSE_PG_PASSWORD=y "$tag" \
  -c /usr/share/datasync/sync.example.yaml validate
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "docker-build: ok, user $user, $((size / 1024 / 1024)) MiB"
