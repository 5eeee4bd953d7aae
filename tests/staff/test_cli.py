"""``sigillo staff add/list/reset/disable`` as scripts run them: real processes, never a
prompt, only the link on stdout, one clear line for every refusal, every change audited."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sigillo.staff import totp
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import AuditEvent, StaffAccount

_LINK = re.compile(r"^http://portal\.org\.example/staff/enrol/[A-Za-z0-9_-]{43}\n$")


def sigillo(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sigillo", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path, store_url: str) -> dict[str, str]:
    env = {
        "SIGILLO_STORAGE__DATABASE_URL": store_url,
        "SIGILLO_STORAGE__KEY_FILE": str(tmp_path / "sigillo.keys"),
        "SIGILLO_PORTAL__BASE_URL": "http://portal.org.example",
        "USER": "opsperson",
    }
    assert sigillo("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    return env


async def rows(url: str) -> tuple[list[StaffAccount], list[AuditEvent]]:
    from sqlalchemy import select

    store = Store(url)
    try:
        async with store.session() as session:
            accounts = list(
                (await session.execute(select(StaffAccount).order_by(StaffAccount.id))).scalars()
            )
            events = list(
                (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()
            )
        return accounts, events
    finally:
        await store.close()


async def test_add_prints_only_the_link(tmp_path: Path, env: dict[str, str]) -> None:
    added = sigillo(
        "staff",
        "add",
        "Ada@Org.Example",
        "--role",
        "admin",
        "--role",
        "operator,agent",
        env=env,
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    assert _LINK.match(added.stdout), added.stdout
    assert "ada@org.example added" in added.stderr and "3 days" in added.stderr
    [account], events = await rows(env["SIGILLO_STORAGE__DATABASE_URL"])
    assert account.email == "ada@org.example" and account.roles == "admin,operator,agent"
    assert account.password_hash is None and account.totp_secret is not None
    keyring = Keyring.load(tmp_path / "sigillo.keys")
    secret = totp.secret_of(keyring, account)
    assert secret is not None and len(secret) == 32
    [entry] = [e for e in events if e.action == "staff.added"]
    assert entry.actor == "cli:opsperson"
    assert entry.details == {"staff": "ada@org.example", "roles": ["admin", "operator", "agent"]}
    token = added.stdout.strip().rsplit("/", 1)[1]
    assert token not in json.dumps(entry.details) and secret not in json.dumps(entry.details)


async def test_add_refusals_are_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    assert (
        sigillo("staff", "add", "ada@org.example", "-r", "admin", env=env, cwd=tmp_path).returncode
        == 0
    )
    cases = [
        (("ada@org.example", "--role", "agent"), 1, "already has a staff account"),
        (("bob@org.example", "--role", "boss"), 2, "unknown role 'boss'"),
        (("not-an-address", "--role", "agent"), 2, "not an email address"),
        (("bob@org.example", "--role", ","), 2, "at least one --role"),
    ]
    for args, code, message in cases:
        result = sigillo("staff", "add", *args, env=env, cwd=tmp_path)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""
    missing = sigillo("staff", "add", "bob@org.example", env=env, cwd=tmp_path)
    assert missing.returncode == 2  # --role is required; typer says so, no prompt
    accounts, _ = await rows(env["SIGILLO_STORAGE__DATABASE_URL"])
    assert [a.email for a in accounts] == ["ada@org.example"]


async def test_list_reset_disable(tmp_path: Path, env: dict[str, str]) -> None:
    first = sigillo("staff", "add", "olga@org.example", "-r", "operator", env=env, cwd=tmp_path)
    listed = sigillo("staff", "list", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0
    assert json.loads(listed.stdout) == [
        {
            "email": "olga@org.example",
            "roles": ["operator"],
            "enrolled_at": None,
            "last_login_at": None,
            "disabled_at": None,
        }
    ]
    assert "olga@org.example" in sigillo("staff", "list", env=env, cwd=tmp_path).stdout
    [before], _ = await rows(env["SIGILLO_STORAGE__DATABASE_URL"])
    reset = sigillo("staff", "reset", "OLGA@org.example", env=env, cwd=tmp_path)
    assert reset.returncode == 0 and _LINK.match(reset.stdout)
    assert reset.stdout != first.stdout
    [after], _ = await rows(env["SIGILLO_STORAGE__DATABASE_URL"])
    assert after.totp_secret != before.totp_secret  # a new authenticator key
    disabled = sigillo("staff", "disable", "olga@org.example", env=env, cwd=tmp_path)
    assert disabled.returncode == 0 and disabled.stdout == ""
    again = sigillo("staff", "disable", "olga@org.example", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "already disabled" in again.stderr
    no_reset = sigillo("staff", "reset", "olga@org.example", env=env, cwd=tmp_path)
    assert no_reset.returncode == 1 and "is disabled" in no_reset.stderr
    nobody = sigillo("staff", "reset", "nobody@org.example", env=env, cwd=tmp_path)
    assert nobody.returncode == 1 and "no staff account for nobody@org.example" in nobody.stderr
    _, events = await rows(env["SIGILLO_STORAGE__DATABASE_URL"])
    assert [(e.action, e.actor) for e in events if e.action.startswith("staff.")] == [
        ("staff.added", "cli:opsperson"),
        ("staff.reset", "cli:opsperson"),
        ("staff.disabled", "cli:opsperson"),
    ]
    verified = sigillo("audit", "verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
