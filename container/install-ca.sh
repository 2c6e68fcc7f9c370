#!/bin/sh
# Add the PEM certificates in DIR/*.crt (bundles allowed) to the system trust store.
#   install-ca.sh DIR
# Each certificate of a bundle becomes its own file, because update-ca-certificates
# hashes one certificate per file. Needs the ca-certificates package.
set -eu
dir=${1:?usage: install-ca.sh DIR}
dest=/usr/local/share/ca-certificates/pimagic
mkdir -p "$dest"
found=0
for f in "$dir"/*.crt; do
  [ -f "$f" ] || continue
  base=$(basename "$f" .crt)
  awk -v out="$dest/$base" '
    /-----BEGIN CERTIFICATE-----/ { n++; file = sprintf("%s-%03d.crt", out, n); inside = 1 }
    inside { print > file }
    /-----END CERTIFICATE-----/ { inside = 0; close(file) }
  ' "$f"
  found=1
done
if [ "$found" = 1 ] && ! ls "$dest"/*.crt >/dev/null 2>&1; then
  echo "ERROR: no PEM certificate found in $dir/*.crt" >&2
  exit 1
fi
update-ca-certificates >/dev/null
echo "pimagic: $(ls "$dest" | wc -l) extra CA certificate(s) trusted"
