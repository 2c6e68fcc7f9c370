#!/usr/bin/env bash
# Print the URI of this machine's own apt source for a Debian suite, so the offline base image
# is built from the mirror the machine already uses (a corporate mirror, a proxy, a snapshot)
# and no mirror host is written into pimagic.
#
#   container/base/apt-mirror.sh SUITE [APT_DIR]      e.g. bookworm, bookworm-security
#
# Reads APT_DIR/sources.list, APT_DIR/sources.list.d/*.list (one-line format) and
# APT_DIR/sources.list.d/*.sources (deb822), APT_DIR defaulting to /etc/apt. Only enabled
# binary (`deb`) sources with an http, https or file URI count. The first source that lists
# SUITE wins; else the first one laid out like Debian's archive (a URI ending in /debian for a
# release, /debian-security for a SUITE-security), which serves every release. Exits 1 with an
# `ERROR:` line when none does.
set -euo pipefail

suite=${1:?usage: apt-mirror.sh SUITE [APT_DIR]}
apt_dir=${2:-/etc/apt}

# One "URI SUITE" line per (URI, suite) pair of every enabled deb source, in apt's file order.
entries() {
  local f
  shopt -s nullglob
  for f in "$apt_dir/sources.list" "$apt_dir"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE [COMPONENT...]; the options may hold spaces inside [ ].
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  done
  for f in "$apt_dir"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas: Types/URIs/Suites/Enabled, fields may continue on indented lines.
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j]
        }
        types = uris = suites = field = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { value = $0; sub(/^[ \t]+/, "", value)
                 if (field == "types") types = types " " value
                 else if (field == "uris") uris = uris " " value
                 else if (field == "suites") suites = suites " " value
                 next }
      { key = tolower($0); sub(/:.*/, "", key); value = $0; sub(/^[^:]*:[ \t]*/, "", value)
        field = key
        if (key == "types") types = value
        else if (key == "uris") uris = value
        else if (key == "suites") suites = value
        else if (key == "enabled") enabled = value }
      END { flush() }
    ' "$f"
  done
}

layout=/debian
case "$suite" in *-security) layout=/debian-security ;; esac

found=$(entries | awk -v suite="$suite" -v layout="$layout" '
  $1 !~ /^(https?|file):/ { next }
  { uri = $1; sub(/\/+$/, "", uri) }
  $2 == suite && exact == "" { exact = uri }
  uri ~ (layout "$") && archive == "" { archive = uri }
  END { print (exact != "" ? exact : archive) }
')
if [ -z "$found" ]; then
  echo "ERROR: no apt source for '$suite' in $apt_dir (sources.list, sources.list.d/*.list, *.sources);" \
       "set PIMAGIC_DEBIAN_MIRROR (and PIMAGIC_DEBIAN_SECURITY_MIRROR) to a Debian mirror's URL" >&2
  exit 1
fi
echo "$found"
