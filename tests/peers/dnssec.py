"""DNSSEC for the test peers: nsd serves zones signed by ldns-signzone, unbound validates them.

Point sigillo at `DnssecPeer.nameserver` ("127.0.0.1:PORT", unbound) and answers carry the AD
bit exactly when the data validated against the session's trust anchor (the DS of ``test.``).

Zones (all served by one nsd, which only unbound talks to):

- ``test.`` (`SECURE_ZONE`): signed; the trust anchor. Any name under ``.test`` that is not in one
  of the zones below lives here, so ``mx.dane.test`` is secure.
- ``insecure.test.`` (`INSECURE_ZONE`): unsigned, delegated without DS: answers are NOERROR or
  NXDOMAIN without AD (DANE does not apply).
- ``bogus.test.`` (`BOGUS_ZONE`): signed, but the DS in ``test.`` names a key that did not sign
  it: everything under it is bogus, and unbound answers SERVFAIL.

API (the session fixture ``dnssec_peer`` in tests/peers/fixtures.py is one running instance):

- ``peer.publish(["dane.test. MX 10 mx.dane.test.", "mx.dane.test. A 127.1.2.3",
  "_25._tcp.mx.dane.test. TLSA 3 1 1 ABCD..."])`` adds records (zone-file lines: owner, optional
  TTL and class, type, data; names are absolute with or without the final dot; the default TTL is
  `DEFAULT_TTL`). Each record goes to the zone that holds its owner name. The changed zones are
  re-signed, nsd reloads them, unbound's cache for ``test.`` is flushed, and the call returns
  once nsd serves the new data (under 0.1 s). ``bogus=True`` corrupts the signatures of those
  RRsets only (say a TLSA RRset in an otherwise secure zone): unbound then answers SERVFAIL for
  them alone. A string is accepted for a single record.
- ``peer.withdraw("mx.dane.test", ...)`` removes every record of those owner names.
- ``peer.fresh_domain("dane")`` returns an unused name such as ``dane-3f9a1c.test``
  (``zone=INSECURE_ZONE`` or ``BOGUS_ZONE`` for one under those zones). The peer lives for the
  whole session, so tests use their own names and never rely on records of other tests.
- ``peer.authoritative`` is nsd's "127.0.0.1:PORT" (answers without validation, for checks of
  the raw data); ``peer.trust_anchor`` the DS record text unbound trusts.

Start-up (key generation, signing, nsd, unbound) takes about 0.4 s. Both daemons run as root
with ``username: ""`` and ``chroot: ""`` in the peer's directory, where their logs stay
(``nsd.log``, ``unbound.log``; unbound logs why data is bogus).
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.zone

from tests.peers.net import free_port_tcp_udp
from tests.peers.proc import spawn, terminate

__all__ = ["BOGUS_ZONE", "DEFAULT_TTL", "INSECURE_ZONE", "SECURE_ZONE", "DnssecPeer"]

SECURE_ZONE = "test."
INSECURE_ZONE = "insecure.test."
BOGUS_ZONE = "bogus.test."
DEFAULT_TTL = 300
#: SOA minimum: how long resolvers keep negative answers.
NEGATIVE_TTL = 60
ADDRESS = "127.0.0.1"
_NS = "ns.test."


@dataclass(frozen=True)
class _Record:
    owner: dns.name.Name
    ttl: int
    rdata: dns.rdata.Rdata
    bogus: bool

    @property
    def rdtype(self) -> str:
        return dns.rdatatype.to_text(self.rdata.rdtype)

    def line(self) -> str:
        return f"{self.owner} {self.ttl} IN {self.rdtype} {self.rdata.to_text()}"


@dataclass
class _Zone:
    apex: dns.name.Name
    signed: bool
    filename: str
    keys: tuple[str, str] | None = None
    """(ZSK, KSK) ldns key file stems, for signed zones."""
    records: list[_Record] = field(default_factory=list)
    serial: int = 0
    dirty: bool = True

    @property
    def served_file(self) -> str:
        return self.filename + (".signed" if self.signed else "")


def _parse(lines: Iterable[str], bogus: bool) -> list[_Record]:
    text = "\n".join(lines)
    try:
        zone = dns.zone.from_text(
            f"$TTL {DEFAULT_TTL}\n{text}\n",
            origin=dns.name.root,
            relativize=False,
            check_origin=False,
        )
    except dns.exception.DNSException as exc:
        raise ValueError(f"not zone-file records: {exc}\n{text}") from exc
    return [_Record(name, int(ttl), rdata, bogus) for name, ttl, rdata in zone.iterate_rdatas()]


def _corrupt(signed: str, targets: set[tuple[dns.name.Name, str]]) -> str:
    """Flip a byte of the RRSIGs covering `targets` (owner, type) in ldns-signzone output."""
    out = []
    for line in signed.splitlines():
        fields = line.split()
        if (
            len(fields) >= 13
            and fields[3] == "RRSIG"
            and (dns.name.from_text(fields[0]), fields[4]) in targets
        ):
            signature = bytearray(base64.b64decode("".join(fields[12:])))
            signature[0] ^= 0xFF
            fields[12:] = [base64.b64encode(bytes(signature)).decode()]
            line = "\t".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


class DnssecPeer:
    """nsd (authoritative, signed zones) behind unbound (validating) on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nsd_port = 0
        self.unbound_port = 0
        self._nsd: subprocess.Popen[bytes] | None = None
        self._unbound: subprocess.Popen[bytes] | None = None
        self._serial = int(time.time())
        self._zones = {
            SECURE_ZONE: _Zone(dns.name.from_text(SECURE_ZONE), True, "test.zone"),
            INSECURE_ZONE: _Zone(dns.name.from_text(INSECURE_ZONE), False, "insecure.test.zone"),
            BOGUS_ZONE: _Zone(dns.name.from_text(BOGUS_ZONE), True, "bogus.test.zone"),
        }
        self._ds: dict[str, str] = {}

    # --- addresses ------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """unbound, the validating resolver: ``"127.0.0.1:PORT"`` for ``[dns] nameservers``."""
        return f"{ADDRESS}:{self.unbound_port}"

    @property
    def authoritative(self) -> str:
        """nsd: ``"127.0.0.1:PORT"``. Answers are never validated (no AD), for raw checks."""
        return f"{ADDRESS}:{self.nsd_port}"

    @property
    def trust_anchor(self) -> str:
        """The DS record of ``test.`` that unbound trusts."""
        return self._ds[SECURE_ZONE]

    # --- records --------------------------------------------------------------------------

    def fresh_domain(self, label: str = "d", zone: str = SECURE_ZONE) -> str:
        """An unused domain under `zone`, such as ``dane-3f9a1c.test`` (no final dot)."""
        if zone not in self._zones:
            raise ValueError(f"unknown zone {zone!r}: one of {sorted(self._zones)}")
        return f"{label}-{secrets.token_hex(3)}.{zone}".rstrip(".")

    def _zone_for(self, name: dns.name.Name) -> _Zone:
        # The deepest zone that holds the name: insecure.test. and bogus.test. before test.
        for zone in sorted(self._zones.values(), key=lambda z: -len(z.apex)):
            if name.is_subdomain(zone.apex):
                return zone
        raise ValueError(f"{name} is not under {SECURE_ZONE}: this peer serves .test only")

    def publish(self, records: str | Iterable[str], *, bogus: bool = False) -> None:
        """Add `records` (zone-file lines) and wait until unbound answers with them."""
        lines = [records] if isinstance(records, str) else list(records)
        for record in _parse(lines, bogus):
            zone = self._zone_for(record.owner)
            if bogus and not zone.signed:
                raise ValueError(f"{record.owner} is in an unsigned zone: it cannot be bogus")
            zone.records.append(record)
            zone.dirty = True
        self._reload()

    def withdraw(self, *owners: str) -> None:
        """Remove every record whose owner is one of `owners`; wait until unbound forgets them."""
        names = {dns.name.from_text(owner.rstrip(".") + ".") for owner in owners}
        for zone in self._zones.values():
            kept = [r for r in zone.records if r.owner not in names]
            if len(kept) != len(zone.records):
                zone.records = kept
                zone.dirty = True
        self._reload()

    # --- zones and keys -------------------------------------------------------------------

    def _keygen(self, zone: str, ksk: bool) -> str:
        argv = ["ldns-keygen", "-a", "ECDSAP256SHA256", *(["-k"] if ksk else []), zone]
        done = subprocess.run(
            argv, cwd=self.workdir, capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout.strip()

    def _make_keys(self) -> None:
        for apex in (SECURE_ZONE, BOGUS_ZONE):
            zsk, ksk = self._keygen(apex, ksk=False), self._keygen(apex, ksk=True)
            self._zones[apex].keys = (zsk, ksk)
            self._ds[apex] = (self.workdir / f"{ksk}.ds").read_text().strip()
        # bogus.test.'s DS in test. names this key, which never signs anything.
        decoy = self._keygen(BOGUS_ZONE, ksk=True)
        self._ds["decoy"] = (self.workdir / f"{decoy}.ds").read_text().strip()

    def _zone_text(self, zone: _Zone) -> str:
        apex = zone.apex.to_text()
        lines = [
            "$ORIGIN .",
            f"$TTL {DEFAULT_TTL}",
            f"{apex} IN SOA {_NS} hostmaster.test. {zone.serial} 3600 600 86400 {NEGATIVE_TTL}",
            f"{apex} IN NS {_NS}",
        ]
        if zone.apex == dns.name.from_text(SECURE_ZONE):
            lines += [
                f"{_NS} IN A {ADDRESS}",
                f"{INSECURE_ZONE} IN NS {_NS}",
                f"{BOGUS_ZONE} IN NS {_NS}",
                self._ds["decoy"],
            ]
        seen: set[str] = set()
        for record in zone.records:
            line = record.line()
            if line not in seen:
                seen.add(line)
                lines.append(line)
        return "\n".join(lines) + "\n"

    def _write_zone(self, zone: _Zone) -> None:
        zone.serial = self._serial
        source = self.workdir / zone.filename
        source.write_text(self._zone_text(zone))
        served = self.workdir / zone.served_file
        if zone.signed:
            assert zone.keys is not None
            zsk, ksk = zone.keys
            # Inception an hour back: clocks of signer and validator never disagree by more.
            inception = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
            signed_tmp = self.workdir / f"{zone.served_file}.tmp"
            subprocess.run(
                [
                    "ldns-signzone",
                    "-i",
                    inception.strftime("%Y%m%d%H%M%S"),
                    "-f",
                    str(signed_tmp),
                    str(source),
                    zsk,
                    ksk,
                ],
                cwd=self.workdir,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            targets = {(r.owner, r.rdtype) for r in zone.records if r.bogus}
            if targets:
                signed_tmp.write_text(_corrupt(signed_tmp.read_text(), targets))
            os.replace(signed_tmp, served)
        zone.dirty = False

    # --- processes ------------------------------------------------------------------------

    def _nsd_conf(self) -> str:
        d = self.workdir
        lines = [
            "server:",
            f"  ip-address: {ADDRESS}@{self.nsd_port}",
            '  username: ""',
            '  chroot: ""',
            '  database: ""',
            f'  zonesdir: "{d}"',
            f'  zonelistfile: "{d}/nsd.zonelist"',
            f'  xfrdfile: "{d}/nsd.xfrd"',
            f'  pidfile: "{d}/nsd.pid"',
            f'  logfile: "{d}/nsd.log"',
            "  server-count: 1",
            "  reuseport: no",
            "  do-ip6: no",
            "  verbosity: 1",
            "  xfrd-reload-timeout: 0",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in self._zones.values():
            lines += ["zone:", f'  name: "{zone.apex}"', f'  zonefile: "{zone.served_file}"']
        return "\n".join(lines) + "\n"

    def _unbound_conf(self) -> str:
        d = self.workdir
        lines = [
            "server:",
            f"  interface: {ADDRESS}@{self.unbound_port}",
            f"  port: {self.unbound_port}",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{d}"',
            f'  pidfile: "{d}/unbound.pid"',
            f'  logfile: "{d}/unbound.log"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  val-log-level: 2",
            "  ede: yes",
            "  num-threads: 1",
            "  do-ip6: no",
            "  so-reuseport: no",
            "  outgoing-range: 64",
            "  msg-cache-size: 1m",
            "  rrset-cache-size: 1m",
            "  key-cache-size: 1m",
            "  neg-cache-size: 1m",
            "  qname-minimisation: no",
            "  aggressive-nsec: no",
            "  do-not-query-localhost: no",
            '  module-config: "validator iterator"',
            f'  trust-anchor-file: "{d}/trust-anchor.ds"',
            # Nothing outside .test is ever looked up: no queries to the real root.
            '  local-zone: "." refuse',
            # Replaces unbound's built-in answer for the special-use name test. (RFC 6761).
            '  local-zone: "test." transparent',
            "remote-control:",
            "  control-enable: yes",
            f'  control-interface: "{d}/unbound.ctl"',
            "  control-use-cert: no",
        ]
        for zone in self._zones.values():
            lines += ["stub-zone:", f'  name: "{zone.apex}"']
            lines += [f"  stub-addr: {ADDRESS}@{self.nsd_port}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15) -> None:
        """Generate keys, sign the zones, start nsd and unbound; wait until AD answers come."""
        if self._nsd is not None:
            raise RuntimeError("the DNSSEC peer is already running")
        for tool in ("nsd", "unbound", "unbound-control", "ldns-keygen", "ldns-signzone"):
            if shutil.which(tool) is None:
                raise RuntimeError(
                    f"{tool} not found: install the Debian packages nsd, unbound, ldnsutils"
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_keys()
        (self.workdir / "trust-anchor.ds").write_text(self.trust_anchor + "\n")
        for zone in self._zones.values():
            self._write_zone(zone)
        self._nsd = self._start_daemon(
            "nsd", lambda: ["nsd", "-d", "-c", str(self._conf("nsd"))], timeout
        )
        self._unbound = self._start_daemon(
            "unbound", lambda: ["unbound", "-d", "-c", str(self._conf("unbound"))], timeout
        )

    def _conf(self, daemon: str) -> Path:
        path = self.workdir / f"{daemon}.conf"
        path.write_text(self._nsd_conf() if daemon == "nsd" else self._unbound_conf())
        return path

    def _start_daemon(
        self, daemon: str, argv: Callable[[], list[str]], timeout: float
    ) -> subprocess.Popen[bytes]:
        for _attempt in range(5):
            port = free_port_tcp_udp(ADDRESS)
            if daemon == "nsd":
                self.nsd_port = port
            else:
                self.unbound_port = port
            proc = spawn(argv(), self.workdir / f"{daemon}.out")
            if self._wait_ready(daemon, proc, timeout):
                return proc
            code = proc.poll()
            terminate(proc)
            if code is None or "already in use" not in self._text(f"{daemon}.out", f"{daemon}.log"):
                break
        self.stop()
        raise RuntimeError(
            f"{daemon} did not answer within {timeout}s\n"
            f"--- output and log:\n{self._text(f'{daemon}.out', f'{daemon}.log')}"
        )

    def _ask(self, port: int, name: str, rdtype: str, *, recurse: bool) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        if not recurse:
            query.flags &= ~dns.flags.RD
        # Short: a datagram to a port nobody listens on yet is lost, not refused.
        response: dns.message.Message = dns.query.udp(query, ADDRESS, port=port, timeout=0.1)
        return response

    def _serial_served(self, zone: _Zone) -> int | None:
        try:
            response = self._ask(self.nsd_port, zone.apex.to_text(), "SOA", recurse=False)
        except (dns.exception.Timeout, OSError):
            return None
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                serial: int = rrset[0].serial
                return serial
        return None

    def _wait_ready(self, daemon: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if daemon == "nsd":
                if all(self._serial_served(z) == z.serial for z in self._zones.values()):
                    return True
                time.sleep(0.02)
                continue
            try:
                response = self._ask(self.unbound_port, SECURE_ZONE, "SOA", recurse=True)
            except (dns.exception.Timeout, OSError):
                continue
            if response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AD:
                return True
            time.sleep(0.02)
        return False

    def _reload(self, timeout: float = 15) -> None:
        changed = [zone for zone in self._zones.values() if zone.dirty]
        if not changed:
            return
        self._serial += 1
        for zone in changed:
            self._write_zone(zone)
        if self._nsd is None:
            return
        # nsd rereads changed zone files on SIGHUP; wait until it serves the new serials, twice
        # in a row so that no server process of the old generation answers afterwards.
        deadline = time.monotonic() + timeout
        self._nsd.send_signal(signal.SIGHUP)
        next_hup = time.monotonic() + 1
        streak = 0
        while streak < 2:
            if self._nsd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nsd did not load the new zones:\n{self._text('nsd.log')}")
            if all(self._serial_served(zone) == zone.serial for zone in changed):
                streak += 1
                continue
            streak = 0
            if time.monotonic() > next_hup:
                self._nsd.send_signal(signal.SIGHUP)
                next_hup = time.monotonic() + 1
            time.sleep(0.01)
        self._flush_unbound()

    def _flush_unbound(self) -> None:
        ctl = ["unbound-control", "-c", str(self.workdir / "unbound.conf")]
        for command in (["flush_zone", SECURE_ZONE], ["flush_bogus"], ["flush_negative"]):
            subprocess.run([*ctl, *command], capture_output=True, check=True, timeout=30)

    def _text(self, *names: str) -> str:
        parts = []
        for name in names:
            try:
                parts.append((self.workdir / name).read_text(errors="replace"))
            except FileNotFoundError:
                continue
        return "\n".join(parts)

    def log(self) -> str:
        """unbound's log (why an answer was bogus) and nsd's."""
        return self._text("unbound.log", "nsd.log")

    def stop(self) -> None:
        """Stop unbound and nsd; safe to call more than once and after a failed `start`."""
        for attr in ("_unbound", "_nsd"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is not None:
                terminate(proc)
                setattr(self, attr, None)

    def __repr__(self) -> str:
        return f"DnssecPeer(unbound={self.nameserver}, nsd={self.authoritative})"
