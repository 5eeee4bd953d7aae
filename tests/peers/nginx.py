"""nginx as the recipients' HTTPS servers (MTA-STS policy hosts), on one loopback address.

Each host name gets its own ``server`` block, chosen by SNI, with a certificate from the test CA
for that name (or a deliberately bad one, see `CertKind`); a client sending an unknown SNI name
(or none) has its handshake rejected. What a host answers is set per (host, path):

- ``peer.serve("mta-sts.dane.test", "/.well-known/mta-sts.txt", text,
  content_type="text/plain")``: 200 with that body (str or bytes, any size) and exactly that
  Content-Type (``None``: no Content-Type header at all);
- ``peer.redirect(host, path, "https://elsewhere/...", status=301)``: a redirect;
- ``peer.error(host, path, 404)``: that status with nginx's own error page;
- ``peer.certificate(host, "wrong-name")``: the host's certificate (`CertKind`);
- ``peer.remove(host)``: forget a host.

Every call rewrites the configuration, has the running nginx reload it and returns once the new
configuration answers and the old worker is gone (about 0.15 s). Paths a host was not given
answer 404. ``peer.requests(host)`` lists the paths requested from a host so far (to count
fetches); ``peer.get(host, path)`` fetches as a verifying client would. Point a client at
``peer.address`` and ``peer.port``, with the host name as SNI and ``Host`` header (publish
``mta-sts.<domain> A <peer.address>`` in the test DNS), and trust `PeerCA.pem_path`.

nginx runs as root (master and worker) from its own ``nginx.conf`` in the peer's directory,
with pid file, logs and temporary directories there (``error.log``, ``access.log``).
"""

from __future__ import annotations

import datetime
import http.client
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trustme

from tests.peers.ca import CertFiles, issue_server_cert, self_signed_cert
from tests.peers.net import free_port, wait_for_tcp
from tests.peers.proc import spawn, terminate

__all__ = ["CertKind", "Fetched", "NginxPeer"]

CertKind = Literal["ca", "wrong-name", "self-signed", "expired"]
"""ca: issued by the test CA for the host; wrong-name: issued by the CA for ``wrong.invalid``;
self-signed: for the host, but no CA vouches for it; expired: issued by the CA for the host,
validity ended yesterday."""

#: The host the peer itself asks to see that a reload took effect.
PROBE_HOST = "probe.nginx-peer.test"
_GENERATION_PATH = "/.nginx-peer-generation"


@dataclass(frozen=True)
class Fetched:
    status: int
    content_type: str | None
    body: bytes
    location: str | None = None


@dataclass
class _Route:
    kind: Literal["file", "redirect", "status"]
    status: int
    file: Path | None = None
    content_type: str | None = None
    target: str = ""


@dataclass
class _Host:
    cert: CertFiles
    kind: CertKind
    routes: dict[str, _Route] = field(default_factory=dict)


def _check_token(value: str, what: str) -> str:
    # Values go into nginx.conf unquoted or in double quotes: refuse what would break out.
    if any(c in value for c in ' \t\r\n";{}$\\') or not value:
        raise ValueError(f"{what} {value!r} cannot be written into nginx.conf")
    return value


class NginxPeer:
    """One nginx process serving HTTPS for any number of host names on `address`."""

    def __init__(self, workdir: Path, address: str, ca: trustme.CA) -> None:
        self.workdir = workdir
        self.address = address
        self.ca = ca
        self.port = 0
        self._hosts: dict[str, _Host] = {}
        self._generation = 0
        self._files = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._probe_context = ssl.create_default_context()
        self._probe_context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())

    def url(self, host: str, path: str = "/.well-known/mta-sts.txt") -> str:
        return f"https://{host}:{self.port}{path}"

    # --- what the hosts answer ------------------------------------------------------------

    def _host(self, host: str) -> _Host:
        host = _check_token(host.lower().rstrip("."), "host name")
        if host not in self._hosts:
            self._hosts[host] = _Host(self._issue(host, "ca"), "ca")
        return self._hosts[host]

    def _issue(self, host: str, kind: CertKind) -> CertFiles:
        directory = self.workdir / "tls"
        stem = f"{host}-{kind}"
        if kind == "ca":
            return issue_server_cert(self.ca, (host,), directory, stem)
        if kind == "wrong-name":
            return issue_server_cert(self.ca, ("wrong.invalid",), directory, stem)
        if kind == "self-signed":
            return self_signed_cert(host, directory, stem)
        now = datetime.datetime.now(datetime.UTC)
        leaf = self.ca.issue_cert(
            host,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        files = CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
        directory.mkdir(parents=True, exist_ok=True)
        files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(files.key))
        files.key.chmod(0o600)
        return files

    def certificate(self, host: str, kind: CertKind = "ca") -> None:
        """Give `host` a certificate of `kind` (every host starts with "ca")."""
        entry = self._host(host)
        entry.cert, entry.kind = self._issue(host.lower().rstrip("."), kind), kind
        self._reload()

    def serve(
        self,
        host: str,
        path: str,
        body: str | bytes,
        content_type: str | None = "text/plain",
    ) -> None:
        """Answer GET `path` on `host` with 200, `body` and exactly `content_type`."""
        entry = self._host(host)
        _check_token(path, "path")
        if content_type is not None and any(c in content_type for c in '"\\$\r\n'):
            raise ValueError(f"content type {content_type!r} cannot be written into nginx.conf")
        self._files += 1
        file = self.workdir / "www" / f"{self._files}.body"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body.encode() if isinstance(body, str) else body)
        entry.routes[path] = _Route("file", 200, file=file, content_type=content_type)
        self._reload()

    def redirect(self, host: str, path: str, to: str, status: int = 301) -> None:
        """Answer GET `path` on `host` with a redirect to `to`."""
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"{status} is not a redirect status")
        self._host(host).routes[_check_token(path, "path")] = _Route(
            "redirect", status, target=_check_token(to, "redirect target")
        )
        self._reload()

    def error(self, host: str, path: str, status: int) -> None:
        """Answer GET `path` on `host` with `status` and nginx's own error page."""
        if not 400 <= status <= 599:
            raise ValueError(f"{status} is not an error status")
        self._host(host).routes[_check_token(path, "path")] = _Route("status", status)
        self._reload()

    def remove(self, host: str) -> None:
        """Forget `host`: its handshakes are rejected from now on."""
        self._hosts.pop(host.lower().rstrip("."), None)
        self._reload()

    def requests(self, host: str | None = None) -> list[str]:
        """Paths requested so far (from `host` only, if given), oldest first."""
        try:
            lines = (self.workdir / "access.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            name, _, path = line.partition(" ")
            if path == _GENERATION_PATH or name == PROBE_HOST:
                continue
            if host is None or name == host.lower().rstrip("."):
                found.append(path)
        return found

    # --- configuration --------------------------------------------------------------------

    def _config(self) -> str:
        d = self.workdir
        listen = f"{self.address}:{self.port}"
        temp = "\n".join(
            f"    {kind}_temp_path {d}/tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        out = [
            "user root;",
            "daemon off;",
            "master_process on;",
            "worker_processes 1;",
            f"pid {d}/nginx.pid;",
            f"error_log {d}/error.log info;",
            "events { worker_connections 64; }",
            "http {",
            "    log_format peer '$host $request_uri';",
            f"    access_log {d}/access.log peer;",
            temp,
            "    types { }",
            "    default_type application/octet-stream;",
            "    server_tokens off;",
            # No SNI or an unknown name: no certificate at all, the handshake fails.
            f"    server {{ listen {listen} ssl default_server; ssl_reject_handshake on; }}",
        ]
        probe = self._probe_cert()
        hosts: list[tuple[str, CertFiles, dict[str, _Route]]] = [(PROBE_HOST, probe, {})] + [
            (name, entry.cert, entry.routes) for name, entry in sorted(self._hosts.items())
        ]
        for name, cert, routes in hosts:
            out += [
                "    server {",
                f"        listen {listen} ssl;",
                f"        server_name {name};",
                f"        ssl_certificate {cert.cert};",
                f"        ssl_certificate_key {cert.key};",
                f'        location = {_GENERATION_PATH} {{ return 200 "{self._generation}"; }}',
            ]
            for path, route in sorted(routes.items()):
                out.append(f"        location = {path} {{ {self._location(route)} }}")
            out.append("    }")
        out.append("}")
        return "\n".join(out) + "\n"

    @staticmethod
    def _location(route: _Route) -> str:
        if route.kind == "redirect":
            return f"return {route.status} {route.target};"
        if route.kind == "status":
            return f"return {route.status};"
        # An empty `types` block makes default_type the only Content-Type; "" omits the header.
        ctype = route.content_type if route.content_type is not None else ""
        return f'types {{ }} default_type "{ctype}"; alias {route.file};'

    def _probe_cert(self) -> CertFiles:
        files = CertFiles(
            cert=self.workdir / "tls" / "probe.crt", key=self.workdir / "tls" / "probe.key"
        )
        if not files.cert.exists():
            issue_server_cert(self.ca, (PROBE_HOST,), self.workdir / "tls", "probe")
        return files

    def _write_config(self) -> Path:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        path = self.workdir / "nginx.conf"
        path.write_text(self._config())
        return path

    def _argv(self, *extra: str) -> list[str]:
        return [
            "nginx",
            "-p",
            str(self.workdir),
            "-e",
            str(self.workdir / "error.log"),
            "-c",
            str(self.workdir / "nginx.conf"),
            *extra,
        ]

    # --- process --------------------------------------------------------------------------

    def get(self, host: str, path: str, timeout: float = 5) -> Fetched:
        """GET `path` from `host` as a careful client would: SNI and certificate name `host`,
        chain checked against the test CA. For checks of the peer itself."""
        raw = socket.create_connection((self.address, self.port), timeout=timeout)
        with self._probe_context.wrap_socket(raw, server_hostname=host) as tls:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            response = http.client.HTTPResponse(tls)
            response.begin()
            return Fetched(
                response.status,
                response.getheader("Content-Type"),
                response.read(),
                response.getheader("Location"),
            )

    def _generation_served(self) -> int | None:
        try:
            fetched = self.get(PROBE_HOST, _GENERATION_PATH, timeout=2)
        except (OSError, http.client.HTTPException):
            return None
        text = fetched.body.decode(errors="replace")
        return int(text) if fetched.status == 200 and text.isdigit() else None

    def _workers(self) -> set[int]:
        assert self._proc is not None
        pid = self._proc.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return set()
        return {int(child) for child in text.split()}

    def _wait_generation(self, timeout: float, old_workers: frozenset[int] = frozenset()) -> bool:
        # A worker of the old configuration may still accept a connection or two after a new
        # one answers: done only when the old ones are gone too.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if not (old_workers & self._workers()) and (
                self._generation_served() == self._generation
            ):
                return True
            time.sleep(0.02)
        return False

    def _reload(self, timeout: float = 15) -> None:
        self._generation += 1
        self._write_config()
        if self._proc is None:
            return
        checked = subprocess.run(self._argv("-t"), capture_output=True, text=True, timeout=30)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration:\n{checked.stderr}")
        old_workers = frozenset(self._workers())
        self._proc.send_signal(signal.SIGHUP)
        if not self._wait_generation(timeout, old_workers):
            raise RuntimeError(f"nginx did not reload within {timeout}s\n{self.log()}")

    def start(self, timeout: float = 15) -> None:
        """Start nginx on a free port of `address`; return once it answers over HTTPS."""
        if self._proc is not None:
            raise RuntimeError("nginx is already running")
        if shutil.which("nginx") is None:
            raise RuntimeError("nginx not found: install the Debian package nginx-light")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port(self.address)
            self._generation += 1
            self._write_config()
            self._proc = spawn(self._argv(), self.workdir / "nginx.out")
            if wait_for_tcp(self.address, self.port, time.monotonic() + timeout) and (
                self._wait_generation(timeout)
            ):
                return
            code = self._proc.poll()
            terminate(self._proc)
            self._proc = None
            if code is None or "Address already in use" not in self.log():
                break
        raise RuntimeError(f"nginx on {self.address}:{self.port} did not start\n{self.log()}")

    def log(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            try:
                parts.append((self.workdir / name).read_text(errors="replace"))
            except FileNotFoundError:
                continue
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop nginx (workers included); safe to call more than once."""
        if self._proc is not None:
            # SIGTERM is nginx's fast shutdown: the master stops its workers before it exits.
            terminate(self._proc)
            self._proc = None

    def __repr__(self) -> str:
        return f"NginxPeer({self.address}:{self.port}, hosts={sorted(self._hosts)})"
