"""The ``sigillo`` command as operators and scripts run it: real processes, real peers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sigillo.policies import set_policy
from sigillo.store.db import Store
from tests.integration.gateway import running_gateway
from tests.integration.test_delivery import addr, mail
from tests.peers.dnsmasq import DnsmasqPeer
from tests.peers.fixtures import MxPeers
from tests.peers.net import free_port


def sigillo(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sigillo", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def peer_env(tmp_path: Path, mx: MxPeers, dns: DnsmasqPeer) -> dict[str, str]:
    return {
        "SIGILLO_DNS__NAMESERVERS": json.dumps([f"{dns.address}:{dns.port}"]),
        "SIGILLO_DELIVERY__MX_PORT": str(mx.port),
        "SIGILLO_DELIVERY__CA_FILE": str(mx.ca_file),
        "SIGILLO_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/sigillo.db",
        "SIGILLO_STORAGE__KEY_FILE": str(tmp_path / "sigillo.keys"),
    }


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "sigillo.toml").write_text('[delivery]\ndefault_tls = "may"\n')
    result = sigillo("queue", "--json", cwd=tmp_path)
    assert result.returncode == 2
    assert "delivery.default_tls" in result.stderr and "Traceback" not in result.stderr


def test_database_down_and_uninitialised(tmp_path: Path) -> None:
    down = sigillo(
        "queue",
        cwd=tmp_path,
        env={"SIGILLO_STORAGE__DATABASE_URL": "postgresql://sigillo@127.0.0.1:1/none"},
    )
    assert down.returncode == 1 and "database unavailable" in down.stderr
    assert "Traceback" not in down.stderr
    fresh = sigillo("queue", cwd=tmp_path)
    assert fresh.returncode == 1 and "sigillo db upgrade" in fresh.stderr
    assert sigillo("db", "upgrade", cwd=tmp_path).returncode == 0
    empty = sigillo("queue", "--json", cwd=tmp_path)
    assert empty.returncode == 0 and json.loads(empty.stdout) == {"counts": {}, "jobs": []}


@pytest.mark.peers
@pytest.mark.parametrize(
    ("domain", "decision", "needle"),
    [
        ("tls.test", "tls", "TLS policy met"),
        ("plain.test", "portal", "no STARTTLS"),
        ("wrongname.test", "portal", "certificate"),
        ("broken.test", "portal", "STARTTLS refused"),
        ("nullmx.test", "bounced", "null MX"),
    ],
)
def test_probe(
    tmp_path: Path,
    mx_peers: MxPeers,
    dns_peer: DnsmasqPeer,
    domain: str,
    decision: str,
    needle: str,
) -> None:
    result = sigillo(
        "probe", domain, "--json", cwd=tmp_path, env=peer_env(tmp_path, mx_peers, dns_peer)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decision"] == decision and needle in report["reason"]
    assert report["policy"] == "verify"
    if decision == "tls":
        assert report["tls"]["verified"] and report["mx_host"] == "mx.tls.test"
    # A probe sends no mail.
    assert not [m for m in mx_peers.peer.messages() if m.recipient.endswith("(probe)")]


@pytest.mark.peers
def test_probe_follows_console_policies(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    env = peer_env(tmp_path, mx_peers, dns_peer)
    assert sigillo("db", "upgrade", cwd=tmp_path, env=env).returncode == 0

    async def portal_policy() -> None:
        store = Store(env["SIGILLO_STORAGE__DATABASE_URL"])
        try:
            await store.write(
                lambda session: set_policy(
                    session,
                    "tls.test",
                    tls="portal",
                    retention_days=None,
                    actor="admin@org.example",
                    at=datetime.now(UTC),
                )
            )
        finally:
            await store.close()

    asyncio.run(portal_policy())
    report = json.loads(sigillo("probe", "tls.test", "--json", cwd=tmp_path, env=env).stdout)
    assert report["policy"] == "portal" and report["policy_source"] == "console:tls.test"
    assert report["decision"] == "portal" and "warning" not in report
    # The config file wins over the console.
    env["SIGILLO_DELIVERY__DOMAINS"] = json.dumps({"tls.test": "verify"})
    report = json.loads(sigillo("probe", "tls.test", "--json", cwd=tmp_path, env=env).stdout)
    assert report["policy_source"] == "tls.test" and report["decision"] == "tls"


def test_probe_without_a_database_says_so(tmp_path: Path) -> None:
    env = {"SIGILLO_STORAGE__DATABASE_URL": f"sqlite:///{tmp_path}/none.db"}
    result = sigillo("probe", "nonexistent.invalid", "--json", cwd=tmp_path, env=env)
    assert "console policies not read" in json.loads(result.stdout)["warning"]
    assert not (tmp_path / "none.db").exists()  # a probe creates nothing


@pytest.mark.peers
async def test_message_show_and_queue(
    tmp_path: Path, mx_peers: MxPeers, dns_peer: DnsmasqPeer
) -> None:
    ok, portal = addr("tls.test"), addr("plain.test")
    async with running_gateway(tmp_path, mx_peers, dns_peer) as gateway:
        msg_id = await gateway.send("rossi@org.example", [ok, portal], mail([ok, portal]))
        await gateway.settle(msg_id)
    env = {"SIGILLO_STORAGE__DATABASE_URL": gateway.settings.storage.database_url}
    result = sigillo("message", "show", msg_id, "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    by_rcpt = {r["recipient"]: r for r in shown["recipients"]}
    tls_record = by_rcpt[ok]["history"][0]
    assert by_rcpt[ok]["state"] == "delivered" and tls_record["outcome"] == "tls"
    assert tls_record["tls_version"].startswith("TLSv1.") and tls_record["cert_verified"]
    assert tls_record["mx_ip"] == mx_peers.tls and tls_record["smtp_code"] == 250
    assert by_rcpt[portal]["state"] == "portal"
    assert "no STARTTLS" in by_rcpt[portal]["history"][0]["reason"]
    assert "Oncology" not in result.stdout  # records, never content
    queue = json.loads(sigillo("queue", "--json", "--all", cwd=tmp_path, env=env).stdout)
    assert queue["counts"]["deliver"] == {"delivered": 1, "portal": 1}
    missing = sigillo("message", "show", "0" * 32, cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "no message" in missing.stderr


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(port)


def test_serve_on_embedded_defaults(tmp_path: Path) -> None:
    """No config file: SQLite and keys under ./var; only the ports are moved for parallel runs."""
    smtp_port, http_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = {
        **os.environ,
        "SIGILLO_SMTP__LISTEN": f"127.0.0.1:{smtp_port}",
        "SIGILLO_PORTAL__LISTEN": f"127.0.0.1:{http_port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sigillo", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        _wait_port(smtp_port, deadline)
        _wait_port(http_port, deadline)
        with smtplib.SMTP("127.0.0.1", smtp_port) as client:
            code, banner = client.ehlo("mail.org.example")
            assert code == 250 and b"SIZE" in banner
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz") as response:
            assert json.load(response) == {"status": "ok"}
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # The log stream is JSON lines only, start-up of the migrations and the web server included.
    events = [json.loads(line) for line in err.decode().splitlines()]
    assert {"schema_ready", "serving", "stopping"} <= {e["event"] for e in events}
    assert (tmp_path / "var" / "sigillo.db").is_file()
    keys = tmp_path / "var" / "sigillo.keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    for db_file in (tmp_path / "var").glob("sigillo.db*"):
        assert stat.S_IMODE(db_file.stat().st_mode) == 0o600, db_file
    for line in err.decode().splitlines():
        if line.startswith("{"):
            json.loads(line)  # structured logs are JSON lines


def test_serve_refuses_cleanly_when_it_cannot_start(tmp_path: Path) -> None:
    down = sigillo(
        "serve",
        cwd=tmp_path,
        env={"SIGILLO_STORAGE__DATABASE_URL": "postgresql://sigillo@127.0.0.1:1/none"},
    )
    assert down.returncode == 1 and "database unavailable" in down.stderr
    assert "Traceback" not in down.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = sigillo(
            "serve",
            "--role",
            "smtp",
            cwd=tmp_path,
            env={"SIGILLO_SMTP__LISTEN": f"127.0.0.1:{port}"},
        )
    assert taken.returncode == 1 and "address already in use" in taken.stderr.lower()
    assert "Traceback" not in taken.stderr
