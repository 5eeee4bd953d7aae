"""``sigillo check``: is this email really from us? The portal's "Is this email really from
us?" page, for a file or standard input. Needs no database: the checks use the config only.

Exit status: 0 for a completed check whatever its verdict, 1 when the check errored (the
verdict says ``errored``), 2 for a usage or config error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from rich.console import Console
from rich.text import Text

from sigillo.commands.common import ConfigOption, JsonOption, emit, fail, settings_from
from sigillo.gateway.addresses import AddressError, split_mailbox

if TYPE_CHECKING:
    from sigillo.phishing import Report

VERDICT_LINES = {
    "genuine": "genuine: this email really comes from the organisation",
    "suspicious": "suspicious: it cannot be confirmed as the organisation's",
    "phishing": "phishing: an imitation; do not click its links, do not reply, delete it",
    "errored": "errored: the check failed; treat the email as not verified",
}
VERDICT_STYLES = {"genuine": "bold green", "phishing": "bold red", "errored": "bold red"}
SEVERITY_STYLES = {"high": "red", "medium": "yellow"}


def check(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE.eml",
            help="The email's raw source, as saved by the mail program; - reads standard input",
            show_default=False,
        ),
    ],
    recipient: Annotated[
        str | None,
        typer.Option(
            "--recipient",
            metavar="ADDR",
            help="The address the recipient gave the organisation; mail that went elsewhere "
            "is reported",
        ),
    ] = None,
    config: ConfigOption = None,
    json_: JsonOption = False,
) -> None:
    """Is this email really from us? A verdict (genuine, suspicious, phishing) and the
    findings behind it."""
    # Imported here: the checker's libraries would slow every other command's start.
    from sigillo.phishing import Checker, CheckPolicy

    settings = settings_from(config)
    if recipient is not None:
        try:
            split_mailbox(recipient.strip())
        except AddressError as exc:
            fail(f"--recipient {recipient!r}: {exc}", 2)
    policy = CheckPolicy.from_settings(settings)
    # One byte past the limit is enough for the checker to report the message as too large;
    # the rest of a huge input is never read into memory.
    raw = _read(file, policy.max_size + 1)
    report = Checker(policy).check(raw, recipient.strip() if recipient else None)
    if json_:
        emit(report.to_json(), True)
    else:
        _print(report, Console(highlight=False, soft_wrap=True))
    if report.verdict == "errored":
        raise typer.Exit(1)


def _read(file: str, limit: int) -> bytes:
    if file == "-":
        return _read_stream(sys.stdin.buffer, limit)
    try:
        with Path(file).open("rb") as stream:
            return _read_stream(stream, limit)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}", 2)
        raise  # unreachable; fail() exits


def _read_stream(stream: BinaryIO, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = stream.read(min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _print(report: Report, console: Console) -> None:
    line = Text("verdict: ")
    line.append(VERDICT_LINES[report.verdict], style=VERDICT_STYLES.get(report.verdict, "bold"))
    console.print(line)
    if not report.findings:
        console.print("no findings")
    for finding in report.findings:
        # Text objects, not markup: brackets in the evidence are printed, not interpreted.
        entry = Text("\n")
        entry.append(f"{finding.severity:<6}", style=SEVERITY_STYLES.get(finding.severity, ""))
        entry.append(f" {finding.code}", style="bold")
        entry.append(f"\n  {finding.explanation('en')}")
        if finding.evidence:
            entry.append(f"\n  evidence: {finding.evidence}", style="dim")
        console.print(entry)
