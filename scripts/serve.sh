#!/usr/bin/env bash
# Run sigillo (all roles unless --role says otherwise) from the repository's .venv.
#
#   scripts/serve.sh [--config FILE] [--role smtp,worker,portal] ...
#
# Creates .venv and installs sigillo into it on first use. Runs in the current directory, so a
# relative --config, ./sigillo.toml and ./var resolve where you are.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ ! -x "$repo/.venv/bin/python" ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "==> installing python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv </dev/null >/dev/null
fi
if [ ! -x "$repo/.venv/bin/sigillo" ]; then
    [ -x "$repo/.venv/bin/python" ] || python3 -m venv "$repo/.venv"
    "$repo/.venv/bin/pip" install -q -e "$repo"
fi
exec "$repo/.venv/bin/sigillo" serve "$@"
