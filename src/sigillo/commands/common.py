"""What every ``sigillo`` command shares: options, settings, the store, errors, output."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import DBAPIError, OperationalError

from sigillo.config import ConfigError, Settings, load_settings
from sigillo.dkim import DkimKeyError
from sigillo.store.crypto import KeyringError
from sigillo.store.db import Store, StoreUnavailable

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config (default ./sigillo.toml)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"sigillo: {message}", err=True)
    raise typer.Exit(code)


def settings_from(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable; fail() exits


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning operational failures into one clear line (no traceback)."""
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except StoreUnavailable as exc:
        fail(str(exc))
    except (OperationalError, DBAPIError, ConnectionRefusedError) as exc:
        first = str(getattr(exc, "orig", exc) or exc).splitlines()[0]
        fail(f"database unavailable: {first}")
    except (KeyringError, DkimKeyError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


async def open_store(settings: Settings) -> Store:
    """A store whose schema matches this code, or a clear instruction to the operator."""
    from sigillo.store import migrate

    store = Store(settings.storage.database_url)
    try:
        current, head = await migrate.revision(store)
    except BaseException:
        await store.close()
        raise
    if current != head:
        await store.close()
        raise StoreUnavailable(
            f"database schema is at {current or 'nothing'}, this sigillo needs {head}: "
            "run 'sigillo db upgrade'"
        )
    return store


def emit(data: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(data))


def cli_actor() -> str:
    """Who runs an operation from the command line, as the audit log names them."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid={os.getuid()}"
