"""``sigillo audit``: the tamper-evident audit log."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, TextIO

import typer

from sigillo.commands.common import (
    ConfigOption,
    JsonOption,
    cli_actor,
    emit,
    fail,
    open_store,
    run,
    settings_from,
)
from sigillo.store import audit
from sigillo.store.audit import AuditLogError, ChainReport

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")

_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})")


@app.command("verify")
def verify_cmd(
    config: ConfigOption = None,
    json_: JsonOption = False,
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            metavar="SEQ:HASH",
            help="A head printed by an earlier run: the chain must still contain it",
        ),
    ] = None,
) -> None:
    """Recompute the hash chain; exit 0 when intact, 1 naming the first broken entry.

    Record the head it prints somewhere else (a ticket, the SIEM): a later run with
    --anchor proves the entries up to it were not rewritten since."""
    settings = settings_from(config)
    pinned: tuple[int, str] | None = None
    if anchor is not None:
        match = _ANCHOR.fullmatch(anchor.strip().lower())
        if match is None:
            fail(f"--anchor: expected SEQ:HASH (64 hex digits), got {anchor!r}", 2)
            return
        pinned = (int(match[1]), match[2])

    async def go() -> ChainReport:
        store = await open_store(settings)
        try:
            return await audit.verify(store, anchor=pinned)
        finally:
            await store.close()

    report = run(go)
    if json_:
        emit(asdict(report), True)
    elif report.first_broken is None:
        typer.echo(
            f"audit log intact: {report.entries} entries, head {report.head_seq} {report.head_hash}"
        )
    else:
        broken = report.first_broken
        where = "the head" if broken.seq is None else f"entry {broken.seq}"
        row = "" if broken.row_id is None else f" (row id {broken.row_id})"
        typer.echo(
            f"audit log broken at {where}{row}: {broken.reason}; "
            f"{_entries(report.entries)} intact before it"
        )
    if not report.ok:
        raise typer.Exit(1)


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _moment(option: str, text: str) -> datetime:
    """A date (midnight) or an ISO 8601 date and time; without a zone, UTC."""
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"{option}: {text!r} is not a date (YYYY-MM-DD) or date and time (ISO 8601)", 2)
        raise  # unreachable; fail() exits
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@app.command("export")
def export_cmd(
    since: Annotated[
        str, typer.Option("--since", help="First day or moment included (UTC unless given)")
    ],
    until: Annotated[
        str | None, typer.Option("--until", help="First day or moment left out")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Entries as JSON lines, in chain order, each with seq, prev_hash and hash.

    The export is itself recorded in the audit log (``audit.exported``)."""
    settings = settings_from(config)
    start = _moment("--since", since)
    end = _moment("--until", until) if until is not None else None
    if end is not None and end <= start:
        fail("--until must be later than --since", 2)
    if output is not None and output.is_dir():
        fail(f"--output: {output} is a directory", 2)
    actor = cli_actor()

    async def go(sink: TextIO) -> int:
        store = await open_store(settings)
        try:
            count = 0
            async for entry in audit.export(store, start, end):
                sink.write(json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n")
                count += 1
            sink.flush()
            if sink is not sys.stdout:
                os.fsync(sink.fileno())
            # Recorded before the file takes its name: no export leaves unrecorded.
            await audit.log(
                store,
                "audit.exported",
                actor=actor,
                at=datetime.now(UTC),
                details={
                    "since": start.isoformat(),
                    "until": end.isoformat() if end is not None else None,
                    "count": count,
                    "to": "file" if sink is not sys.stdout else "stdout",
                },
            )
            return count
        finally:
            await store.close()

    try:
        if output is None:
            run(lambda: go(sys.stdout))
            return
        _export_to_file(output, go)
    except AuditLogError as exc:
        fail(str(exc))


def _export_to_file(output: Path, writer: Callable[[TextIO], Awaitable[int]]) -> None:
    """Write to a private temporary file beside ``output``; rename it into place only when
    complete, so a reader never sees half an export."""
    output = output.absolute()
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"--output: cannot write {output}: {exc.strerror}", 2)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            count = run(lambda: writer(sink))
        os.replace(partial, output)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    typer.echo(f"exported {_entries(count)} to {output}", err=True)
