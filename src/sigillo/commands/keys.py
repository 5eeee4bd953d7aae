"""``sigillo keys``: key-encryption keys."""

from __future__ import annotations

import signal
from dataclasses import asdict
from datetime import datetime
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

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
from sigillo.config import parse_duration
from sigillo.store.crypto import Keyring
from sigillo.store.rotation import RotationResult, describe, rotate

app = typer.Typer(no_args_is_help=True, help="Key-encryption keys.")


class RichProgress:
    """Draws a run's progress on stderr: rows re-wrapped of the total, rate, time left."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("re-wrapping"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None

    def rewrapping(self, total: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.bar.start()
        self.task = self.bar.add_task("rewrap", total=total, rate="")

    def advanced(self, rows: int) -> None:
        if self.task is None:
            return
        self.bar.advance(self.task, rows)
        speed = self.bar.tasks[self.bar.task_ids.index(self.task)].speed
        self.bar.update(self.task, rate=f"{speed:,.0f} rows/s" if speed else "")

    def waiting(self, until: datetime) -> None:
        self.bar.stop()
        self.console.print(
            f"waiting until {until.isoformat(timespec='seconds')} before retiring the old key "
            "(every running sigillo re-reads the key file by then)"
        )

    def close(self) -> None:
        self.bar.stop()


def _as_json(result: RotationResult) -> dict[str, Any]:
    data = asdict(result)
    for kept in data["kept"]:
        after = kept["retire_after"]
        kept["retire_after"] = after.isoformat() if after else None
    data["unreadable"] = [{**u, "sealing": str(u["sealing"])} for u in data["unreadable"]]
    return data


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the run like Ctrl-C: the open batch rolls back, the next run resumes.
    raise KeyboardInterrupt


@app.command("rotate")
def rotate_cmd(
    config: ConfigOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=100_000, help="Rows per transaction")
    ] = 500,
    grace: Annotated[
        str,
        typer.Option(
            help="How long the new key must have been active before an old key is retired "
            "(every running sigillo re-reads the key file before its next seal)"
        ),
    ] = "5m",
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Keep an old key still in its grace period instead of waiting; a later run "
            "retires it",
        ),
    ] = False,
    json_: JsonOption = False,
) -> None:
    """A new key-encryption key, every data key re-wrapped under it, old keys retired.

    Never prompts. Safe to interrupt at any point: running it again resumes the unfinished
    rotation instead of starting another."""
    settings = settings_from(config)
    try:
        grace_period = parse_duration(grace)
    except ValueError as exc:
        fail(f"--grace: {exc}", 2)
        return
    key_file = settings.storage.key_file
    console = Console(stderr=True)
    progress = RichProgress(console)

    async def go() -> RotationResult:
        Keyring.load(key_file)  # a missing or loose key file stops us before anything changes
        store = await open_store(settings)  # and so does a database we cannot use
        try:
            return await rotate(
                store,
                key_file,
                actor=cli_actor(),
                batch_size=batch_size,
                grace=grace_period,
                wait=not no_wait,
                progress=progress,
            )
        finally:
            progress.close()
            await store.close()

    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        result = run(go)
    except KeyboardInterrupt:
        progress.close()
        fail("rotation interrupted; run 'sigillo keys rotate' again to resume it", 130)
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
    if json_:
        emit(_as_json(result), True)
    else:
        for line in describe(result):
            typer.echo(line)
    if result.unreadable:
        for row in result.unreadable:
            typer.echo(
                f"sigillo: {row.sealing} row {row.row} does not open under key {row.kek_id}; "
                "that key is kept",
                err=True,
            )
        raise typer.Exit(1)
