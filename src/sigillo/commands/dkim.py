"""``sigillo dkim``: the key sigillo signs its own mail with. Never prompts.

``show`` prints only the DNS record on stdout (what to do with it goes to stderr), so
``sigillo dkim show >> zone`` captures exactly the record."""

from __future__ import annotations

import typer

from sigillo.commands.common import ConfigOption, JsonOption, emit, fail, settings_from
from sigillo.dkim import DkimKeyError, DkimSigner

app = typer.Typer(no_args_is_help=True, help="The DKIM key sigillo signs its own mail with.")

TXT_STRING_LIMIT = 255
"""Bytes in one character-string of a TXT record (RFC 1035 section 3.3); a longer value is
published as several strings, which verifiers join without separators (RFC 6376 3.6.2.2)."""


def txt_strings(value: str) -> list[str]:
    """``value`` as TXT character-strings: the tags before ``p=``, then the key in pieces."""
    tags, found, key = value.partition("p=")
    if not found:
        key, tags = value, ""
    else:
        key = "p=" + key
    pieces = [key[i : i + TXT_STRING_LIMIT] for i in range(0, len(key), TXT_STRING_LIMIT)]
    return ([tags] if tags else []) + pieces


def zone_line(name: str, value: str) -> str:
    # base64 and the tags hold no '"' or '\\', so the strings need no escaping.
    strings = " ".join(f'"{s}"' for s in txt_strings(value))
    return f"{name}. IN TXT ( {strings} )"


@app.command("show")
def show(config: ConfigOption = None, json_: JsonOption = False) -> None:
    """The DNS TXT record that publishes sigillo's DKIM key (created on first use).

    Recipients' mail servers and sigillo's own phishing check verify its notifications, DSNs
    and account mail against this record."""
    settings = settings_from(config)
    notify = settings.notify
    path = notify.dkim_key_file
    try:
        signer = DkimSigner.load_or_create(path, notify.dkim_selector, notify.domain)
    except DkimKeyError as exc:
        fail(str(exc))
        return
    except OSError as exc:
        fail(f"cannot create DKIM key {path}: {exc.strerror or exc}")
        return
    value = signer.txt_value()
    if json_:
        emit(
            {
                "name": signer.dns_name,
                "value": value,
                "selector": signer.selector,
                "domain": signer.domain,
            },
            True,
        )
        return
    typer.echo(zone_line(signer.dns_name, value))
    typer.echo(
        f"Publish this TXT record in the DNS zone of {signer.domain}; mail sigillo sends as "
        f"{notify.from_} is signed with selector {signer.selector!r} of key {path}.",
        err=True,
    )
