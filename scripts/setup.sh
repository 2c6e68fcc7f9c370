#!/usr/bin/env bash
# Set up pimagic on this machine: a Docker engine that answers (installs Debian's
# docker.io and starts dockerd when none does; needs root for that part), a base
# image (a local debootstrap one when the official image cannot be pulled), the
# package with its test extras, pi on the host for comparisons, and the sandbox image.
# Prints the environment it settled on as `export` lines at the end (stdout);
# progress goes to stderr.  Usage:  eval "$(bash scripts/setup.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "ERROR: $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to install $* (or install it yourself)"
  [ "$apt_updated" = 1 ] || { apt-get update -q >/dev/null; apt_updated=1; }
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

{
# 1. A Docker engine that answers.
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    log "installing Debian's docker.io"
    apt_install docker.io
  fi
  log "starting dockerd"
  (dockerd >/var/log/pimagic-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 30 /var/log/pimagic-dockerd.log >&2; die "dockerd did not start"; }
fi
docker version --format 'docker engine {{.Server.Version}}'

# 1b. gcc: the security suite builds an attacker's own preload library with it
#     (tests/security/test_fs_vault.py fails, never skips, without it).
command -v gcc >/dev/null || { log "installing Debian's gcc"; apt_install gcc; }

# 2. Trust this machine's CA bundle in image builds (its registries sit behind a
#    TLS-intercepting proxy): the same option corporate users set.
if [ -z "${PIMAGIC_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export PIMAGIC_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi

# 3. A base image: the official one when it can be pulled, else a local build.
official=$(sed -n 's/^ARG BASE_IMAGE=//p' container/Dockerfile)
if [ -z "${PIMAGIC_BASE_IMAGE:-}" ]; then
  if docker image inspect "$official" >/dev/null 2>&1 || timeout 300 docker pull -q "$official" >/dev/null 2>&1; then
    export PIMAGIC_BASE_IMAGE=$official
  else
    export PIMAGIC_BASE_IMAGE=pimagic-base:node22-bookworm
    if ! docker image inspect "$PIMAGIC_BASE_IMAGE" >/dev/null 2>&1; then
      log "no registry: building $PIMAGIC_BASE_IMAGE with debootstrap"
      command -v debootstrap >/dev/null || apt_install debootstrap
      command -v npm >/dev/null || apt_install npm
      bash container/base/build-offline-base.sh "$PIMAGIC_BASE_IMAGE"
    fi
  fi
fi
echo "base image: $PIMAGIC_BASE_IMAGE"

# 4. The package, its test extras, and pi on the host (for host-side comparisons).
log "installing pimagic"
python3 -m pip install -q -e '.[test]'
host_pi=$(bash bench/install-host-pi.sh)
eval "$host_pi"

# 5. The image, built once; every test shares it.
log "building the sandbox image"
pimagic build | tail -n 3

} >&2
echo "export PIMAGIC_BASE_IMAGE='$PIMAGIC_BASE_IMAGE' PIMAGIC_EXTRA_CA_CERTS='${PIMAGIC_EXTRA_CA_CERTS:-}'"
echo "export PIMAGIC_HOST_NODE='${PIMAGIC_HOST_NODE:-}' PIMAGIC_HOST_PI_CLI='${PIMAGIC_HOST_PI_CLI:-}'"
