#!/usr/bin/env bash
# PNG screenshots of every portal page, desktop and phone, English and Italian.
#
#   scripts/screenshots.sh [OUTDIR]     # default: var/screenshots in the repository
#
# Starts the portal alone on a temporary SQLite database with a seeded conversation and
# drives Debian's Chromium over loopback: no network, no Postfix. A relative OUTDIR is taken
# from the current directory. Prints the files written; runs from any directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python="$repo/.venv/bin/python"
if [ ! -x "$python" ]; then
    echo "scripts/screenshots.sh: $python not found; create .venv first (scripts/test.sh does)" >&2
    exit 1
fi

outdir=${1:-"$repo/var/screenshots"}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

cd "$repo"
exec "$python" -m tests.screenshots "$outdir"
