#!/usr/bin/env bash
# The main job on a fresh machine: set up (Docker engine, base image, package,
# sandbox image), then run the quickstart notebook headless in a demo folder and
# print where the executed notebook went. Without a configured model provider
# the scripted model answers (it says so). Usage: bash scripts/demo.sh [NOTEBOOK]
set -euo pipefail
cd "$(dirname "$0")/.."
env_lines=$(bash scripts/setup.sh)
eval "$env_lines"
notebook=${1:-notebooks/quickstart.ipynb}
demo_dir=${PIMAGIC_DEMO_DIR:-${TMPDIR:-/tmp}/pimagic-demo}
mkdir -p "$demo_dir"
cp "$notebook" "$demo_dir/"
# As root, the sandbox's agent runs as uid 1000 (never root): give it the demo folder.
if [ "$(id -u)" = 0 ]; then chown 1000:1000 "$demo_dir"; fi
python3 -m pimagic.demo "$demo_dir/$(basename "$notebook")"
