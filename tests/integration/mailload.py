"""Load for the process-level tests: `sigillo serve` as a child process, many marked messages
submitted from a few threads, and a tally of the markers that reached Postfix's Maildir.

Every message carries one marker in its body (``<prefix>-<index>``) and goes to its own
recipient at tls.test, so a test can tell its mail apart from everything else the session-wide
Postfix holds and count how often each message arrived.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.test_cli import sigillo

SENDER = "rossi@org.example"
QUEUED_AS = re.compile(rb"queued as ([0-9a-f]{32})")


@dataclass(frozen=True)
class Outgoing:
    index: int
    marker: str
    recipient: str
    data: bytes


def batch(tag: str, count: int, body_size: int = 4096) -> tuple[str, list[Outgoing]]:
    """`count` messages with unique markers and recipients; returns (marker prefix, messages)."""
    prefix = f"LOAD-{tag}-{secrets.token_hex(4)}"
    filler_line = "Referto ambulatoriale: valori nella norma, controllo tra sei mesi."
    lines = [filler_line] * max(1, body_size // (len(filler_line) + 2))
    filler = "\r\n".join(lines)
    mails = []
    for index in range(count):
        marker = f"{prefix}-{index:04d}"
        recipient = f"{tag}{prefix[-8:]}{index:04d}@tls.test".lower()
        data = (
            f"From: Dr Rossi <{SENDER}>\r\nTo: <{recipient}>\r\n"
            f"Subject: load test {index}\r\n"
            f"Message-ID: <{secrets.token_hex(8)}@org.example>\r\n"
            f"\r\n{marker}\r\n{filler}\r\n"
        ).encode()
        mails.append(Outgoing(index, marker, recipient, data))
    return prefix, mails


@dataclass
class Submission:
    """What each submitted message got back; filled in by the client threads."""

    accepted: dict[int, str] = field(default_factory=dict)
    """index -> the queue id from "250 2.0.0 OK queued as <id>"."""
    refused: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    cut: set[int] = field(default_factory=set)
    """The connection died while this message was in flight: no final reply was seen."""
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted_count(self) -> int:
        with self.lock:
            return len(self.accepted)


class Submitter:
    """Sends `mails` to 127.0.0.1:`port` over `threads` persistent SMTP connections."""

    def __init__(self, port: int, mails: Sequence[Outgoing], threads: int = 4) -> None:
        self.port = port
        self.result = Submission()
        self._threads = [
            threading.Thread(target=self._client, args=(list(mails[i::threads]),), daemon=True)
            for i in range(threads)
        ]

    def start(self) -> Submitter:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(thread.is_alive() for thread in self._threads)
        if alive:
            raise TimeoutError(f"{alive} SMTP client thread(s) still sending after {timeout}s")

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _client(self, mails: list[Outgoing]) -> None:
        result = self.result
        current: Outgoing | None = None
        try:
            with smtplib.SMTP(
                "127.0.0.1", self.port, local_hostname="mail.org.example", timeout=60
            ) as client:
                client.ehlo()
                for current in mails:
                    code, text = client.mail(SENDER)
                    if code == 250:
                        code, text = client.rcpt(current.recipient)
                    if code == 250:
                        code, text = client.data(current.data)
                    with result.lock:
                        if code == 250:
                            match = QUEUED_AS.search(text)
                            result.accepted[current.index] = match[1].decode() if match else ""
                        else:
                            result.refused[current.index] = (code, text)
                    if code != 250:
                        client.rset()
                current = None
        except (smtplib.SMTPException, OSError) as exc:
            with result.lock:
                if current is not None:
                    result.cut.add(current.index)
                result.errors.append(repr(exc))


def submit(port: int, mails: Sequence[Outgoing], threads: int = 4) -> Submission:
    submitter = Submitter(port, mails, threads).start()
    submitter.join(timeout=300)
    return submitter.result


class MaildirTally:
    """Counts how many delivered files carry each marker ``<prefix>-NNNN`` (by index).

    Postfix moves each message into ``new/`` with one rename, so a file seen there is complete;
    each file is read once and remembered by its unique base name.
    """

    def __init__(self, maildir: Path, prefix: str) -> None:
        self.maildir = maildir
        self.pattern = re.compile(re.escape(prefix.encode()) + rb"-(\d{4})\b")
        self._files: dict[str, frozenset[int]] = {}

    def counts(self) -> Counter[int]:
        for sub in ("new", "cur"):
            directory = self.maildir / sub
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                key = path.name.split(":", 1)[0]
                if key in self._files:
                    continue
                try:
                    raw = path.read_bytes()
                except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                    continue
                self._files[key] = frozenset(int(i) for i in self.pattern.findall(raw))
        tally: Counter[int] = Counter()
        for found in self._files.values():
            tally.update(found)
        return tally

    def wait(
        self, done: Callable[[Counter[int]], bool], timeout: float, poll: float = 0.1
    ) -> Counter[int]:
        """Poll until `done(counts)` holds; raise TimeoutError with the last counts otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if done(counts):
                return counts
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(counts)} distinct markers after {timeout}s")
            time.sleep(poll)

    def settled(self, quiet: float = 2.0, timeout: float = 30) -> Counter[int]:
        """Counts once nothing new arrived for `quiet` seconds (Postfix finishing its queue)."""
        deadline = time.monotonic() + timeout
        last = self.counts()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            counts = self.counts()
            if counts != last:
                last, since = counts, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


# -- sigillo processes and their queue ----------------------------------------------------------


class Serve:
    """One ``python -m sigillo serve --role ROLES`` child, logging JSON lines to `log_path`."""

    def __init__(self, roles: str, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.roles = roles
        self.log_path = log_path
        with log_path.open("ab") as log:  # a file, not a pipe: a full pipe would stall the child
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sigillo", "serve", "--role", roles],
                cwd=cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_port(self, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"port {port} not open\n{self.log()[-3000:]}") from None
                time.sleep(0.05)

    def wait_log(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            self._check_alive()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{needle!r} not logged\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"sigillo serve --role {self.roles} exited with {self.proc.returncode}\n"
                f"{self.log()[-3000:]}"
            )

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit status (SIGKILL and a failure if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def reaped(processes: list[Serve]) -> Iterator[list[Serve]]:
    """Whatever happens in the block, every process in `processes` is dead after it."""
    try:
        yield processes
    finally:
        for process in processes:
            process.ensure_dead()


def queue_report(cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    result = sigillo("queue", "--json", "--all", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wait_queue_settled(cwd: Path, env: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    """`sigillo queue --json --all` once no job of any kind is queued any more."""
    deadline = time.monotonic() + timeout
    while True:
        report = queue_report(cwd, env)
        if not any("queued" in states for states in report["counts"].values()):
            return report
        if time.monotonic() >= deadline:
            return report  # the caller's assertions show what is left
        time.sleep(0.5)


def assert_queue_drained(report: dict[str, Any], recipients: set[str]) -> int:
    """No job queued or held, every deliver job delivered and ours; returns the deliver jobs."""
    counts = report["counts"]
    stuck = [
        (job["job"], job["kind"], job["recipient"], job["state"], job["reason"])
        for job in report["jobs"]
        if job["state"] in ("queued", "held")
    ]
    assert not stuck, f"jobs left behind: {stuck[:10]} (counts {counts})"
    deliver = [job for job in report["jobs"] if job["kind"] == "deliver"]
    assert set(counts) == {"deliver"}, counts  # no notification, no DSN: all went over TLS
    assert counts["deliver"] == {"delivered": len(deliver)}, counts
    assert {job["recipient"] for job in deliver} <= recipients
    return len(deliver)
