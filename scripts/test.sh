#!/usr/bin/env bash
# Install what the test suite needs and run every check: ruff, mypy, pytest.
#
#   scripts/test.sh [PYTEST ARGS...]      (test paths are relative to the repository root)
#
# Runs from any directory, as root, without standard input. Installs the Debian packages the
# integration tests drive (Postfix, dnsmasq, swaks; nsd, unbound and ldnsutils for the
# DNSSEC-signed test zones, nginx-light for MTA-STS policy hosts; Chromium and a font for the
# portal's browser tests, which Playwright drives instead of downloading its own; PostgreSQL when
# there is none),
# starts the PostgreSQL cluster when it is down, creates .venv and installs the project into it.
# Every check runs even when an earlier one fails; the exit status is non-zero if any failed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh must run as root: it installs packages and runs Postfix instances" >&2
    exit 1
fi

# --- Debian packages --------------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for pkg in postfix dnsmasq swaks nsd unbound ldnsutils nginx-light chromium fonts-dejavu-core; do
    installed "$pkg" || missing+=("$pkg")
done
if ! command -v psql >/dev/null || ! command -v pg_ctlcluster >/dev/null \
    || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    missing+=(postgresql)
fi
if [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Postfix asks debconf how to configure the default instance: a local-only one, never used.
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    apt-get update -qq
    # The tests run their own nsd, unbound and nginx: the packages' services must not start
    # (they would take ports 53, 80 and 443, and unbound may rewrite resolv.conf). A
    # policy-rc.d that answers 101 tells Debian's maintainer scripts not to start any service.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null || status=$?
    if [ -n "$own_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    [ "$status" -eq 0 ] || exit "$status"
    # Nor start at the next boot; and should one be running anyway, stop it.
    for pkg in nsd unbound nginx-light; do
        [[ " ${missing[*]} " == *" $pkg "* ]] || continue
        service=${pkg%-light}
        say "disabling the default $service service the package installed"
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service" >/dev/null 2>&1 || true
        else
            systemctl disable "$service" >/dev/null 2>&1 || true
            if [ -x "/etc/init.d/$service" ]; then
                "/etc/init.d/$service" stop >/dev/null 2>&1 || true
            fi
        fi
        update-rc.d "$service" disable >/dev/null 2>&1 || true
    done
    # The tests run their own instances; the package's default Postfix must not hold port 25.
    if [[ " ${missing[*]} " == *" postfix "* ]] && postfix status >/dev/null 2>&1; then
        say "stopping the default Postfix instance the package started"
        postfix stop >/dev/null 2>&1 || true
    fi
fi

# --- PostgreSQL -------------------------------------------------------------------------------
pg_version=$(ls /etc/postgresql | sort -V | tail -n 1)
if ! pg_ctlcluster --skip-systemctl-redirect "$pg_version" main status >/dev/null 2>&1; then
    say "starting PostgreSQL $pg_version/main"
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
fi

# --- Python environment -----------------------------------------------------------------------
stamp=.venv/.sigillo-installed
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing sigillo and its test dependencies into .venv"
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi

# --- checks -----------------------------------------------------------------------------------
failed=()
check() {
    local name=$1
    shift
    say "$name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

check "ruff check" .venv/bin/ruff check src tests
check "ruff format" .venv/bin/ruff format --check src tests
check "mypy" .venv/bin/mypy
check "pytest" .venv/bin/pytest "$@"

if [ "${#failed[@]}" -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all checks passed"
