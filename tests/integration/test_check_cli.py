"""``sigillo check`` as recipients' helpers and scripts run it: the real command on real .eml
files and standard input, with no database anywhere.

The messages are built here and shared with the portal's page tests: the organisation's own
mail, DKIM-signed with the key the config names, and an imitation of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

from sigillo.dkim import DkimSigner

ORG = "org.example"
ORG_NAME = "Org Example"
PORTAL = "https://portal.org.example"
RECIPIENT = "anna@example.net"
SELECTOR = "sigillo"


def org_mail(key_file: Path, *, to: str = RECIPIENT, subject: str = "Your test results") -> bytes:
    """The organisation's own mail, signed with its DKIM key (created at ``key_file``)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Org Example <secure@{ORG}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=ORG)
    msg.set_content(
        f"You have a secure message. Read it in the portal: {PORTAL}/\n\n"
        "We will never ask for your password by email.\n"
    )
    signer = DkimSigner.load_or_create(key_file, SELECTOR, ORG)
    return signer.sign(msg.as_bytes())


def imitation(
    *,
    to: str = RECIPIENT,
    href: str = "http://login.org-examp1e.com/verify",
    name: str = "Org Example Secure Messages",
    subject: str = "Urgent: verify your account",
) -> bytes:
    """A look-alike of the organisation's mail: another domain claiming its name, a link
    that shows the portal and leads elsewhere, a request for a password."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"{name} <secure@org-examp1e.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="org-examp1e.com")
    msg.set_content("Your account is locked. Confirm your password and PIN to unlock it.\n")
    msg.add_alternative(
        "<p>Your account is locked. Confirm your password and PIN to unlock it:</p>"
        f'<p><a href="{href}">{PORTAL}/login</a></p>',
        subtype="html",
    )
    return msg.as_bytes()


def write_config(directory: Path, **smtp: str) -> Path:
    """A config for the check alone: the organisation's domain, its portal, its DKIM key."""
    lines = [
        "[smtp]",
        *(f'{key} = "{value}"' for key, value in smtp.items()),
        "[portal]",
        f'base_url = "{PORTAL}"',
        "[notify]",
        f'from = "secure@{ORG}"',
        f'dkim_selector = "{SELECTOR}"',
        f'dkim_key_file = "{directory / "dkim.key"}"',
        "[phishing]",
        f'org_domains = ["{ORG}"]',
        f'org_names = ["{ORG_NAME}"]',
        "[storage]",
        f'database_url = "sqlite:///{directory / "absent" / "never.db"}"',
        f'key_file = "{directory / "absent" / "keys"}"',
    ]
    config = directory / "sigillo.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def sigillo_check(
    *args: str, cwd: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sigillo", "check", *args],
        cwd=cwd,
        env=dict(os.environ),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def codes(output: str) -> set[str]:
    return {f["code"] for f in json.loads(output)["findings"]}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_config(tmp_path)
    return tmp_path


def test_the_organisations_signed_mail_is_genuine(workdir: Path) -> None:
    eml = workdir / "results.eml"
    eml.write_bytes(org_mail(workdir / "dkim.key"))
    result = sigillo_check(str(eml), "--recipient", RECIPIENT, "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)  # exactly one JSON object, nothing else
    assert report["verdict"] == "genuine"
    assert "org-authenticated" in codes(result.stdout)
    for finding in report["findings"]:
        assert set(finding) == {"code", "severity", "explanation", "evidence"}
        assert set(finding["explanation"]) == {"en", "it"}
    # No database was needed, or made.
    assert not (workdir / "absent").exists()


def test_a_signed_mail_changed_afterwards_is_not_genuine(workdir: Path) -> None:
    signed = org_mail(workdir / "dkim.key")
    eml = workdir / "changed.eml"
    eml.write_bytes(signed.replace(b"never ask", b"now ask"))
    result = sigillo_check(str(eml), "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] != "genuine"
    assert "dkim-fail" in codes(result.stdout)


def test_an_imitation_is_phishing(workdir: Path) -> None:
    eml = workdir / "imitation.eml"
    eml.write_bytes(imitation())
    result = sigillo_check(str(eml), "--recipient", RECIPIENT, "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "phishing"
    assert {"link-text-mismatch", "asks-for-secrets"} <= codes(result.stdout)


def test_mail_delivered_to_another_address_is_reported(workdir: Path) -> None:
    eml = workdir / "results.eml"
    eml.write_bytes(org_mail(workdir / "dkim.key", to="someone.else@example.net"))
    result = sigillo_check(str(eml), "--recipient", RECIPIENT, "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "not-addressed-to-you" in codes(result.stdout)


def test_standard_input(workdir: Path) -> None:
    result = sigillo_check("-", "--json", cwd=workdir, stdin=imitation())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "phishing"


def test_readable_summary(workdir: Path) -> None:
    eml = workdir / "imitation.eml"
    eml.write_bytes(imitation())
    result = sigillo_check(str(eml), cwd=workdir)
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith("verdict: phishing")
    text = "\n".join(rest)
    assert "link-text-mismatch" in text and "A link shows one address but leads to another." in text
    assert "evidence: " in text and "login.org-examp1e.com" in text


def test_evidence_cannot_drive_the_terminal(workdir: Path) -> None:
    """The message's author writes the evidence: its escape sequences never reach the
    terminal (the checker drops control characters) and rich markup in it is printed, not
    interpreted."""
    hostile = "http://login.org-examp1e.com/\x1b]0;owned\x07[bold red]x[/bold red]\u202e"
    eml = workdir / "hostile.eml"
    eml.write_bytes(imitation(href=hostile))
    result = sigillo_check(str(eml), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\u202e" not in result.stdout
    assert "[bold red]x[/bold red]" in result.stdout


def test_oversize_message_is_errored_not_clean(tmp_path: Path) -> None:
    write_config(tmp_path, max_message_size="16KiB")
    eml = tmp_path / "huge.eml"
    eml.write_bytes(imitation() + b"\r\n" + b"x" * 100 + b"\r\n" * 20_000)
    result = sigillo_check(str(eml), "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["verdict"] == "errored"
    human = sigillo_check("-", cwd=tmp_path, stdin=eml.read_bytes())
    assert human.returncode == 1
    assert human.stdout.startswith("verdict: errored")


@pytest.mark.parametrize("what", ["missing", "directory", "under-a-file"])
def test_unreadable_input_is_a_usage_error(workdir: Path, what: str) -> None:
    target = workdir / "message.eml"
    if what == "directory":
        target.mkdir()
    elif what == "under-a-file":
        target.write_bytes(imitation())
        target = target / "inner.eml"
    result = sigillo_check(str(target), "--json", cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"sigillo: cannot read {target}")
    assert "Traceback" not in result.stderr


def test_usage_errors(workdir: Path) -> None:
    no_file = sigillo_check(cwd=workdir)
    assert no_file.returncode == 2 and "Traceback" not in no_file.stderr
    eml = workdir / "imitation.eml"
    eml.write_bytes(imitation())
    bad = sigillo_check(str(eml), "--recipient", "not an address", cwd=workdir)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "sigillo: --recipient 'not an address': address needs a local part and a domain"
    )


def test_config_errors_as_every_command_reports_them(workdir: Path) -> None:
    (workdir / "sigillo.toml").write_text("[phishing]\norg_domains = []\n")
    eml = workdir / "imitation.eml"
    eml.write_bytes(imitation())
    result = sigillo_check(str(eml), cwd=workdir)
    assert result.returncode == 2
    assert "org_domains" in result.stderr and "Traceback" not in result.stderr
