"""``sigillo staff``: staff console accounts. Never prompts: scripts run these.

``add`` and ``reset`` print only the enrolment link on stdout (a note goes to stderr), so
``link=$(sigillo staff add ...)`` captures exactly the link to hand over."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from sqlalchemy.orm import Session

from sigillo.commands.common import (
    ConfigOption,
    JsonOption,
    cli_actor,
    fail,
    open_store,
    run,
    settings_from,
)
from sigillo.config import Settings
from sigillo.staff import accounts
from sigillo.staff.accounts import StaffError
from sigillo.staff.roles import parse_roles
from sigillo.store.crypto import Keyring

app = typer.Typer(no_args_is_help=True, help="Staff console accounts.")

T = TypeVar("T")
RoleOption = Annotated[
    list[str],
    typer.Option(
        "--role",
        "-r",
        help="admin, operator, auditor or agent; repeat it or give a comma list",
    ),
]


def _change(settings: Settings, work: Callable[[Session, Keyring, datetime], T]) -> T:
    """Run one account change in a transaction; a refused change is one line, exit 1."""

    async def go() -> T:
        keyring = Keyring.load_or_create(settings.storage.key_file)
        store = await open_store(settings)
        try:
            now = datetime.now(UTC)
            return await store.write(lambda session: work(session, keyring, now))
        finally:
            await store.close()

    try:
        return run(go)
    except StaffError as exc:
        fail(str(exc))
        raise  # unreachable; fail() exits


def _period(value: timedelta) -> str:
    if value % timedelta(days=1) == timedelta(0):
        return f"{value.days} day{'s' if value.days != 1 else ''}"
    return f"{value.total_seconds() / 3600:g} hours"


def _print_link(settings: Settings, token: str, note: str) -> None:
    typer.echo(accounts.enrolment_link(settings.portal.base_url, token))
    typer.echo(note, err=True)


@app.command("add")
def add_cmd(email: str, role: RoleOption, config: ConfigOption = None) -> None:
    """Add a member of staff; prints the single-use enrolment link where they choose a
    password and set up their authenticator app."""
    settings = settings_from(config)
    try:
        roles = parse_roles(role)
        address = accounts.valid_email(email)
    except (ValueError, StaffError) as exc:
        fail(str(exc), 2)
        return
    if not roles:
        fail("give at least one --role", 2)
    actor = cli_actor()
    valid = settings.staff.enrolment_valid
    token = _change(
        settings,
        lambda session, keyring, now: accounts.add(
            session, keyring, address, roles, actor=actor, at=now, valid=valid
        ),
    )
    _print_link(
        settings,
        token,
        f"sigillo: {address} added; give them this link (single use, valid {_period(valid)}).",
    )


@app.command("reset")
def reset_cmd(email: str, config: ConfigOption = None) -> None:
    """A lost phone or password: clears both, ends every session, prints a new enrolment
    link."""
    settings = settings_from(config)
    actor = cli_actor()
    valid = settings.staff.enrolment_valid
    token = _change(
        settings,
        lambda session, keyring, now: accounts.reset(
            session, keyring, email, actor=actor, at=now, valid=valid
        ),
    )
    _print_link(
        settings,
        token,
        f"sigillo: {email.strip().lower()} reset; give them this link (single use, "
        f"valid {_period(valid)}).",
    )


@app.command("disable")
def disable_cmd(email: str, config: ConfigOption = None) -> None:
    """Disable a member of staff and end their sessions at once."""
    settings = settings_from(config)
    actor = cli_actor()
    _change(
        settings,
        lambda session, keyring, now: accounts.disable(
            session, email, actor=actor, at=now, keep_an_admin=False
        ),
    )
    typer.echo(f"sigillo: {email.strip().lower()} disabled", err=True)


@app.command("list")
def list_cmd(config: ConfigOption = None, json_: JsonOption = False) -> None:
    """Every staff account: roles, enrolment, last sign-in, disabled."""
    settings = settings_from(config)

    async def go() -> list[accounts.StaffSummary]:
        store = await open_store(settings)
        try:
            return await accounts.list_staff(store)
        finally:
            await store.close()

    members = run(go)
    if json_:
        import json

        typer.echo(json.dumps([m.as_json() for m in members], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("email", "roles", "enrolled", "last sign-in", "status")
    for m in members:
        table.add_row(
            m.email,
            ",".join(m.role_names()),
            m.enrolled_at.isoformat(timespec="seconds") if m.enrolled_at else "not yet",
            m.last_login_at.isoformat(timespec="seconds") if m.last_login_at else "never",
            "disabled" if m.disabled_at else "enabled",
        )
    Console().print(table)
