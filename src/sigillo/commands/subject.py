"""``sigillo subject``: data subject rights: export and erasure of one address's data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from sigillo.commands.common import ConfigOption, cli_actor, fail, open_store, run, settings_from

app = typer.Typer(
    no_args_is_help=True, help="Data subject rights: export and erasure of one address's data."
)


@app.command("export")
def export_cmd(
    email: Annotated[str, typer.Argument(help="The address whose data is exported")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="The zip to write (must not exist; default subject-HASH.zip)"
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write a zip of everything held about EMAIL: each message of its conversations as
    .eml (decrypted, its own replies too), and subject.json with the account, conversations,
    delivery records and audit entries. The file is created 0600; the export is audited.
    An address nothing is known about gets a valid export saying so."""
    from sigillo import subject
    from sigillo.store.crypto import Keyring

    try:
        address = subject.normalise(email)
    except ValueError as exc:
        fail(str(exc), 2)
        raise
    path = output or Path(f"subject-{subject.address_hash(address)[:12]}.zip")
    if path.exists():
        fail(f"{path} exists; choose another --output", 2)
    settings = settings_from(config)

    async def go() -> subject.ExportSummary:
        keyring = Keyring.load(settings.storage.key_file)
        store = await open_store(settings)
        try:
            return await subject.export(
                store, keyring, address, path, actor=cli_actor(), now=datetime.now(UTC)
            )
        finally:
            await store.close()

    summary = run(go)
    what = (
        "nothing is held about this address"
        if summary.empty
        else f"{summary.conversations} conversation(s), {summary.messages} message(s), "
        f"{summary.deliveries} delivery record(s)"
    )
    typer.echo(f"wrote {path}: {what}; {summary.audit_entries} audit entries")


@app.command("erase")
def erase_cmd(
    email: Annotated[str, typer.Argument(help="The address whose data is erased")],
    config: ConfigOption = None,
) -> None:
    """Erase EMAIL (never prompts): destroy the content of its conversations and of mail
    addressed to it, delete its portal account, sessions, reset links and sign-in failure
    counts, cancel mail still queued for it, and replace the address by a pseudonym in the
    delivery records that stay. Recorded as subject.erased with the SHA-256 of the address.

    Audit entries already written are kept unchanged: they hold identifiers, not content,
    the hash chain must stay verifiable, and they are the record of access kept under GDPR
    Art. 17(3)(b) (legal obligation) and 17(3)(e) (legal claims)."""
    from sigillo import subject

    try:
        address = subject.normalise(email)
    except ValueError as exc:
        fail(str(exc), 2)
        raise
    settings = settings_from(config)

    async def go() -> subject.ErasureSummary:
        store = await open_store(settings)
        try:
            return await subject.erase(store, address, actor=cli_actor(), now=datetime.now(UTC))
        finally:
            await store.close()

    summary = run(go)
    if summary.nothing:
        typer.echo(f"nothing to erase for {address}")
        return
    typer.echo(
        f"erased {address}: account {'deleted' if summary.account else 'none'}, "
        f"{summary.conversations} conversation(s), {summary.messages} message(s) destroyed, "
        f"{summary.jobs_cancelled} queued job(s) cancelled, "
        f"{summary.deliveries_pseudonymised} delivery record(s) pseudonymised"
    )
