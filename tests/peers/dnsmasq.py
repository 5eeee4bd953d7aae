"""dnsmasq as the recipients' DNS: MX and address records for names under ``.test``.

What the generated configuration can and cannot say (dnsmasq 2.90):

- MX: ``mx-host=DOMAIN,TARGET,PREFERENCE``. A null MX (RFC 7505) is ``mx-host=DOMAIN,.,0``:
  dnspython sees preference 0 and exchange ``.`` (checked in tests/integration/test_peers.py).
- A: ``host-record=NAME,ADDRESS``. A name with an address and no MX answers MX queries with
  NOERROR and no records (NODATA), i.e. RFC 5321's implicit MX.
- ``local=/test/``: any other name under ``.test`` is NXDOMAIN (without it: REFUSED). Names
  outside ``.test`` are REFUSED (no upstream servers).
- Negative answers carry no SOA record and no AA flag; positive ones have TTL 0.
- TXT (MTA-STS ``_mta-sts`` records) via ``txt-record=NAME,"TEXT"``; any other type, TLSA
  included, only as raw hex rdata via ``dns-rr=NAME,TYPE-NUMBER,HEX``.
- No DNSSEC signing, so answers never carry AD: DANE tests need nsd + unbound instead.
- No SERVFAIL on demand. A name forwarded to a dead server (``server=/NAME/127.0.0.1#9``) gets
  no UDP answer at all (the client times out), and TCP queries for it are closed unanswered.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.peers.net import free_port_tcp_udp
from tests.peers.proc import spawn, terminate

__all__ = ["DnsmasqPeer"]


class DnsmasqPeer:
    """A dnsmasq process answering for `mx` and `hosts` on 127.0.0.1 at an ephemeral port."""

    address = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        mx: dict[str, list[tuple[int, str]]],
        hosts: dict[str, str],
        extra_lines: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.mx = {domain: list(records) for domain, records in mx.items()}
        self.hosts = dict(hosts)
        self.extra_lines = list(extra_lines or [])
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"``, the form of sigillo's ``[dns] nameservers`` entries."""
        return f"{self.address}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "dnsmasq.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dnsmasq.log"

    def config(self) -> str:
        lines = [
            f"port={self.port}",
            f"listen-address={self.address}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "local=/test/",
            "log-queries",
            f"log-facility={self.log_path}",
        ]
        for domain, records in self.mx.items():
            lines += [f"mx-host={domain},{target},{preference}" for preference, target in records]
        lines += [f"host-record={name},{address}" for name, address in self.hosts.items()]
        lines += self.extra_lines
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15) -> None:
        """Start dnsmasq and wait until it answers a query (retrying if the port was taken)."""
        if self._proc is not None:
            raise RuntimeError("dnsmasq is already running")
        if shutil.which("dnsmasq") is None:
            raise RuntimeError("dnsmasq not found: install the Debian package dnsmasq")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port_tcp_udp(self.address)
            self.config_path.write_text(self.config())
            self._proc = spawn(
                ["dnsmasq", "--keep-in-foreground", f"--conf-file={self.config_path}"],
                self.workdir / "dnsmasq.out",
            )
            if self._wait_ready(timeout):
                return
            code = self._proc.poll()
            terminate(self._proc)
            self._proc = None
            if code is None or "Address already in use" not in self._output():
                break
        raise RuntimeError(
            f"dnsmasq on {self.nameserver} did not answer within {timeout}s\n"
            f"--- output:\n{self._output()}\n--- config:\n{self.config()}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        query = dns.message.make_query("ready.invalid-probe.test", "A")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                answer = dns.query.udp(query, self.address, port=self.port, timeout=0.5)
            except (dns.exception.Timeout, OSError):
                continue
            return answer.rcode() == dns.rcode.NXDOMAIN
        return False

    def _output(self) -> str:
        try:
            return (self.workdir / "dnsmasq.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        """dnsmasq's log, one line per query (``log-queries``)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop dnsmasq; safe to call more than once and after a failed `start`."""
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def __repr__(self) -> str:
        return f"DnsmasqPeer({self.nameserver}, mx={sorted(self.mx)}, hosts={sorted(self.hosts)})"
