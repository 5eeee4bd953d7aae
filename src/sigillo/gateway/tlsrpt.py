"""SMTP TLS reporting (RFC 8460): count every delivery session per policy domain, and once a
day send each domain that asks for it (``_smtp._tls`` TXT) the previous UTC day's report.

- ``count`` runs inside the delivery worker's result transaction: one upsert per session,
  safe when workers on one database count the same key at the same moment.
- A report goes to every ``rua`` URI of the domain's record: ``https:`` by POST (certificate
  validated, no redirects, the host's addresses through the configured resolvers and only
  public ones), ``mailto:`` as a mail queued like account mail, which the worker DKIM-signs.
- Each (day, domain) is claimed in ``tlsrpt_sent`` before anything is sent and keeps its
  outcome there: a report goes out once, however many workers run. A temporary failure (DNS
  did not answer, the HTTPS endpoint failed) releases the claim and the hourly job tries again
  until the day after the reported one ends.

Reports hold no message content and no addresses of recipients: policy texts, MX names,
IP addresses and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import ipaddress
import json
import random
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import partial
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import h11
import sqlalchemy.orm
import structlog
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sigillo.config import Settings
from sigillo.gateway import queue
from sigillo.gateway.addresses import AddressError, split_mailbox
from sigillo.gateway.dnssec import SecureResolver
from sigillo.notify import SEVEN_BIT
from sigillo.portal.outbox import TLS_REPORT
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store
from sigillo.store.models import JobKind, Message, TLSReportCount, TLSReportSent

log = structlog.get_logger("sigillo.tlsrpt")

SUCCESS = "success"
"""``result_type`` of a session that met its policy (counted, never a failure detail)."""

RESULT_TYPES = frozenset(
    {
        # negotiation failures (section 4.3.1)
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        # DANE (section 4.3.2.1)
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        # MTA-STS (section 4.3.2.2)
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
)
"""The failure result types of RFC 8460 section 4.3."""

PolicyType = Literal["tlsa", "sts", "no-policy-found"]
POLICY_TYPES: frozenset[str] = frozenset({"tlsa", "sts", "no-policy-found"})

MEDIA_TYPE = "application/tlsrpt+gzip"
MAX_REPORT_DELAY = timedelta(hours=2)
"""Reports start after 00:00 UTC plus a random delay up to this, so that senders everywhere
do not all post at midnight (RFC 8460 section 4.1)."""
RETRY_INTERVAL = timedelta(hours=1)
"""How often the job looks again for reports still due (a temporary failure)."""
STALE_CLAIM = timedelta(hours=1)
"""A claim this old whose sender never recorded an outcome (it died) may be taken again."""
HTTPS_TIMEOUT = 60.0
"""One POST, connection to response, in seconds."""
MAX_RECORD_URIS = 10
"""More ``rua`` URIs than this in one record: only the first ones get the report."""

_CLAIMED = "sending"
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_VERSION = re.compile(r"v=TLSRPTv1[ \t]*(;|\Z)")


# -- counting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionResult:
    """One delivery session (or a failed attempt at one) as a TLS report counts it."""

    policy_domain: str
    policy_type: PolicyType
    policy_strings: tuple[str, ...]
    """TLSA records as text, or the MTA-STS policy's lines; empty for ``no-policy-found``."""
    mx_host: str
    """The MX the session was with; "" when none was reached (a policy fetch failed)."""
    receiving_ip: str
    result_type: str
    """``success`` or one of ``RESULT_TYPES``."""

    def __post_init__(self) -> None:
        # Callers are sigillo's own policy layers: an unknown name is a bug, and a report
        # must not carry it.
        if self.policy_type not in POLICY_TYPES:
            raise ValueError(f"unknown TLS-RPT policy type {self.policy_type!r}")
        if self.result_type != SUCCESS and self.result_type not in RESULT_TYPES:
            raise ValueError(f"unknown TLS-RPT result type {self.result_type!r}")


def _host(name: str) -> str:
    return name.strip().lower().rstrip(".")


def policy_hash(strings: Sequence[str]) -> str:
    """The key a policy's text is counted under (the text itself is stored beside it)."""
    return hashlib.sha256("\n".join(strings).encode()).hexdigest()


def count(session: sqlalchemy.orm.Session, result: SessionResult, now: datetime) -> None:
    """Count ``result`` for ``now``'s UTC day: one statement, insert or add one, so sessions
    counted at once by several workers all count."""
    strings = list(result.policy_strings)
    values = {
        "day": now.astimezone(UTC).date().isoformat(),
        "policy_domain": _host(result.policy_domain),
        "policy_type": result.policy_type,
        "policy_hash": policy_hash(strings),
        "policy_strings": strings,
        "receiving_mx": _host(result.mx_host),
        "receiving_ip": result.receiving_ip,
        "result_type": result.result_type,
        "count": 1,
    }
    key = [
        TLSReportCount.day,
        TLSReportCount.policy_domain,
        TLSReportCount.policy_type,
        TLSReportCount.policy_hash,
        TLSReportCount.receiving_mx,
        TLSReportCount.receiving_ip,
        TLSReportCount.result_type,
    ]
    more = {"count": TLSReportCount.count + 1}
    if session.get_bind().dialect.name == "postgresql":
        pg = pg_insert(TLSReportCount).values(values)
        session.execute(pg.on_conflict_do_update(index_elements=key, set_=more))
    else:
        lite = sqlite_insert(TLSReportCount).values(values)
        session.execute(lite.on_conflict_do_update(index_elements=key, set_=more))


# -- discovery (RFC 8460 section 3) ------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What a domain's ``_smtp._tls`` TXT says: where reports go, or why it cannot be used."""

    rua: tuple[str, ...] = ()
    problem: str = ""
    """Empty when the record is usable; else why it was rejected or none was found."""


def read_record(records: Sequence[str]) -> Record:
    """The one ``v=TLSRPTv1`` record among ``records`` (TXT strings already joined).

    Records that are not TLS-RPT are ignored; none or several of them mean the domain does
    not take reports (section 3). Unusable URIs are skipped, with the reason kept."""
    found = [r for r in records if _VERSION.match(r)]
    if not found:
        return Record(problem="no v=TLSRPTv1 record")
    if len(found) > 1:
        return Record(problem=f"{len(found)} v=TLSRPTv1 records (exactly one is allowed)")
    fields = [f.strip(" \t") for f in found[0].split(";")]
    if not fields[-1]:
        fields.pop()  # one trailing ";" is allowed
    rua: list[str] | None = None
    for text in fields[1:]:
        name, eq, value = text.partition("=")
        if not eq or not _FIELD_NAME.match(name):
            return Record(problem=f"malformed field {text[:60]!r}")
        if name == "rua":
            if rua is not None:
                return Record(problem="more than one rua field")
            rua = [u.strip(" \t") for u in value.split(",")]
    if rua is None:
        return Record(problem="no rua field")
    usable: list[str] = []
    problems: list[str] = []
    for uri in rua:
        why = uri_problem(uri)
        if why:
            problems.append(f"{uri[:80]!r}: {why}")
        else:
            usable.append(uri)
    if not usable:
        return Record(problem="no usable rua URI: " + "; ".join(problems))
    if len(usable) > MAX_RECORD_URIS:
        problems.append(f"{len(usable) - MAX_RECORD_URIS} URIs beyond {MAX_RECORD_URIS} ignored")
    return Record(tuple(usable[:MAX_RECORD_URIS]), "; ".join(problems))


def parse_tlsrpt_txt(records: Sequence[str]) -> list[str] | None:
    """The ``rua`` URIs (``mailto:``/``https:``) of the domain's one valid TLS-RPT record,
    or None when it has none usable."""
    record = read_record(records)
    return list(record.rua) if record.rua else None


def uri_problem(uri: str) -> str:
    """Why ``uri`` cannot receive a report; "" when it can."""
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if not colon or not rest:
        return "not a URI"
    if not uri.isascii() or any(c.isspace() or ord(c) < 0x20 for c in uri):
        return "contains white space, control or non-ASCII characters"
    if scheme == "mailto":
        return "" if mailto_address(uri) else "not one email address"
    if scheme == "https":
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018  (raises for a port that is not a number)
        except ValueError as exc:
            return f"not a valid URL ({exc})"
        if not parts.hostname or parts.username is not None or parts.password is not None:
            return "needs a host and no user name or password"
        return ""
    return f"scheme {scheme!r} is neither mailto nor https"


def mailto_address(uri: str) -> str | None:
    """The single address of a ``mailto:`` URI (RFC 6068; header fields after ``?`` are
    ignored), or None."""
    target = uri.partition(":")[2].partition("?")[0]
    address = unquote(target).strip()
    if not address or "," in address:
        return None
    try:
        split_mailbox(address)
    except AddressError:
        return None
    return address


async def discover(resolver: SecureResolver, domain: str) -> Record | None:
    """The domain's TLS-RPT record; None when DNS did not answer (try again later)."""
    answer = await resolver.query(f"_smtp._tls.{domain}", "TXT")
    if answer.status == "temporary":
        return None
    if answer.status != "ok":
        return Record(problem=f"no _smtp._tls record ({answer.status})")
    texts: list[str] = []
    for rdata in answer.records:
        strings = getattr(rdata, "strings", None)
        if strings is None:
            continue
        # A TXT record's character-strings are one value (RFC 8460 section 3). Bytes that
        # are not ASCII become U+FFFD: the record still counts, its URIs are refused.
        texts.append(b"".join(strings).decode("ascii", "replace"))
    return read_record(texts)


# -- the report (RFC 8460 section 4) ------------------------------------------------------


def day_range(day: date) -> tuple[datetime, datetime]:
    """The first and the last second of ``day`` in UTC."""
    start = datetime.combine(day, time(0), UTC)
    return start, start + timedelta(days=1, seconds=-1)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def source_address(receiving_ip: str) -> str | None:
    """The local address the system routes to ``receiving_ip`` from: what a session to it
    was sent from (no packet is sent). None when it has no route or is not an address."""
    try:
        family = (
            socket.AF_INET6 if ipaddress.ip_address(receiving_ip).version == 6 else socket.AF_INET
        )
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((receiving_ip, 25))
            local: str = probe.getsockname()[0]
    except (ValueError, OSError):
        return None
    return local


def report_id_for(day: date, domain: str, settings: Settings) -> str:
    """The same for every attempt at one day's report to one domain: a receiver seeing it
    twice (a worker died after sending) can tell it is one report."""
    return f"{day.isoformat()}.{domain}@{settings.smtp.hostname}"


def build_report(
    day: date,
    domain: str,
    rows: Sequence[TLSReportCount],
    settings: Settings,
    report_id: str,
    *,
    sending_ip: Callable[[str], str | None] = source_address,
) -> dict[str, Any]:
    """The JSON report (section 4.4) of ``domain``'s sessions on ``day``.

    One policy entry per policy applied: an MTA-STS policy text, or the TLSA records of one
    MX (DANE policies are per MX host), or none found. ``mx-host`` is a list: the MTA-STS
    policy's ``mx`` patterns, or the one MX of a TLSA policy (RFC 8460's prose allows several
    patterns, and the large reporters send a list)."""
    wanted_day = day.isoformat()
    wanted_domain = _host(domain)
    groups: dict[tuple[str, str, str], list[TLSReportCount]] = {}
    for row in rows:
        if row.day != wanted_day or row.policy_domain != wanted_domain:
            raise ValueError(f"count {row.id} is for {row.day} {row.policy_domain}")
        mx = row.receiving_mx if row.policy_type == "tlsa" else ""
        groups.setdefault((row.policy_type, mx, row.policy_hash), []).append(row)
    start, end = day_range(day)
    sources: dict[str, str | None] = {}
    policies: list[dict[str, Any]] = []
    for (policy_type, mx, _), members in sorted(groups.items()):
        strings = list(members[0].policy_strings)
        policy: dict[str, Any] = {
            "policy-type": policy_type,
            "policy-string": strings,
            "policy-domain": wanted_domain,
        }
        if policy_type == "tlsa":
            policy["mx-host"] = [mx]
        elif policy_type == "sts":
            policy["mx-host"] = [
                line.partition(":")[2].strip()
                for line in strings
                if line.partition(":")[0].strip() == "mx"
            ]
        successes = sum(r.count for r in members if r.result_type == SUCCESS)
        failures = [r for r in members if r.result_type != SUCCESS]
        details = []
        for row in sorted(failures, key=lambda r: (r.result_type, r.receiving_mx, r.receiving_ip)):
            detail: dict[str, Any] = {"result-type": row.result_type}
            if row.receiving_ip:
                if row.receiving_ip not in sources:
                    sources[row.receiving_ip] = sending_ip(row.receiving_ip)
                local = sources[row.receiving_ip]
                if local:
                    detail["sending-mta-ip"] = local
            if row.receiving_mx:
                detail["receiving-mx-hostname"] = row.receiving_mx
            if row.receiving_ip:
                detail["receiving-ip"] = row.receiving_ip
            detail["failed-session-count"] = row.count
            details.append(detail)
        entry: dict[str, Any] = {
            "policy": policy,
            "summary": {
                "total-successful-session-count": successes,
                "total-failure-session-count": sum(r.count for r in failures),
            },
        }
        if details:
            entry["failure-details"] = details
        policies.append(entry)
    return {
        "organization-name": settings.tlsrpt.organization_name,
        "date-range": {"start-datetime": _stamp(start), "end-datetime": _stamp(end)},
        "contact-info": settings.tlsrpt.contact_info or f"postmaster@{settings.smtp.hostname}",
        "report-id": report_id,
        "policies": policies,
    }


def report_bytes(report: dict[str, Any]) -> bytes:
    """The report gzipped (section 5.2); mtime 0, so one report always gives the same bytes."""
    text = json.dumps(report, separators=(",", ":"), ensure_ascii=True).encode()
    return gzip.compress(text, mtime=0)


def report_filename(settings: Settings, domain: str, day: date) -> str:
    """``sender!policy-domain!begin-timestamp!end-timestamp.json.gz`` (section 5.1)."""
    start, end = day_range(day)
    return (
        f"{settings.smtp.hostname}!{domain}!{int(start.timestamp())}!{int(end.timestamp())}.json.gz"
    )


def submitter(settings: Settings) -> str:
    """The reporting organisation's domain: that of the address the report comes from,
    which its DKIM signature is for."""
    return settings.notify.domain


def report_mail(
    settings: Settings,
    recipient: str,
    domain: str,
    day: date,
    report_id: str,
    data: bytes,
    now: datetime,
) -> bytes:
    """The report as mail (section 5.3): multipart/report, a line of text and the gzipped
    JSON as ``application/tlsrpt+gzip``. From sigillo's own address, so the worker signs it."""
    msg = EmailMessage(policy=SEVEN_BIT)
    msg["From"] = settings.notify.from_
    msg["To"] = recipient
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=settings.smtp.hostname)
    msg["Subject"] = (
        f"Report Domain: {domain} Submitter: {submitter(settings)} Report-ID: <{report_id}>"
    )
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter(settings)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter(settings)} for mail "
        f"sent to {domain} on {day.isoformat()} (UTC).\n"
    )
    msg.add_attachment(
        data,
        maintype="application",
        subtype="tlsrpt+gzip",
        filename=report_filename(settings, domain, day),
    )
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # left on the parts when the message became multipart
    return msg.as_bytes()


# -- HTTPS (RFC 8460 section 5.4) --------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    ok: bool
    detail: str
    temporary: bool = False


def public_address(ip: str) -> bool:
    """Reports go only to globally routed addresses: a published ``rua`` must not steer
    sigillo's POSTs into the organisation's own network."""
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def https_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


class HttpsPoster:
    """POSTs reports to ``https:`` URIs, validating certificates against ``ca_file`` (empty:
    the system store). ``port`` and ``allow`` exist for tests: a receiver on loopback."""

    def __init__(
        self,
        resolver: SecureResolver,
        ca_file: str = "",
        *,
        timeout: float = HTTPS_TIMEOUT,
        port: int | None = None,
        allow: Callable[[str], bool] = public_address,
    ) -> None:
        self.resolver = resolver
        self.ca_file = ca_file
        self.timeout = timeout
        self.port = port
        self.allow = allow
        self._context: ssl.SSLContext | None = None

    async def post(self, uri: str, data: bytes) -> Posted:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = self.port or parts.port or 443
        try:
            addresses: tuple[str, ...] = (str(ipaddress.ip_address(host)),)
        except ValueError:
            found, _secure, dns_status = await self.resolver.addresses(host)
            if not found:
                why = f"{host}: no address ({dns_status})"
                return Posted(False, why, temporary=dns_status == "temporary")
            addresses = found
        allowed = [ip for ip in addresses if self.allow(ip)]
        if not allowed:
            return Posted(False, f"{host}: no public address ({', '.join(addresses)})")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        problems: list[str] = []
        for ip in allowed:
            try:
                async with asyncio.timeout(self.timeout):
                    status, reason = await self._exchange(host, ip, port, target, data)
            except TimeoutError:
                problems.append(f"{ip}: timed out")
                continue
            except ssl.SSLCertVerificationError as exc:
                # A certificate that does not verify is not going to start verifying.
                return Posted(False, f"{ip}: certificate not valid: {exc.verify_message}")
            except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
                problems.append(f"{ip}: {type(exc).__name__}: {exc}")
                continue
            line = f"HTTP {status} {reason}".rstrip()
            if 200 <= status < 300:
                return Posted(True, line)
            if 300 <= status < 400:
                return Posted(False, f"{line} (redirects are not followed)")
            return Posted(False, line, temporary=status >= 500 or status == 429)
        return Posted(False, "; ".join(problems), temporary=True)

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = https_context(self.ca_file)
        return self._context

    async def _exchange(
        self, host: str, ip: str, port: int, target: str, data: bytes
    ) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(
            ip, port, ssl=self.context(), server_hostname=host
        )
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="POST",
                target=target,
                headers=[
                    ("Host", host if port == 443 else f"{host}:{port}"),
                    ("User-Agent", "sigillo"),
                    ("Content-Type", MEDIA_TYPE),
                    ("Content-Length", str(len(data))),
                    ("Connection", "close"),
                ],
            )
            writer.write(conn.send(request) + conn.send(h11.Data(data=data)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await reader.read(65536)
                    conn.receive_data(chunk)
                    continue
                if isinstance(event, h11.Response):
                    return event.status_code, event.reason.decode("ascii", "replace")
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("closed before a response")
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


# -- sending -----------------------------------------------------------------------------


async def counts_for(
    store: Store, day: date, domain: str | None = None
) -> dict[str, list[TLSReportCount]]:
    """The day's counts by policy domain (one domain's only, when named)."""
    query = select(TLSReportCount).where(TLSReportCount.day == day.isoformat())
    if domain is not None:
        query = query.where(TLSReportCount.policy_domain == domain)
    async with store.session() as session:
        rows = (await session.execute(query.order_by(TLSReportCount.id))).scalars().all()
    found: dict[str, list[TLSReportCount]] = {}
    for row in rows:
        found.setdefault(row.policy_domain, []).append(row)
    return found


def claim(session: sqlalchemy.orm.Session, day: date, domain: str, now: datetime) -> bool:
    """Take (day, domain) for sending: true if no outcome is recorded and nobody else holds
    it (or their claim is stale: they died)."""
    values = {"day": day.isoformat(), "policy_domain": domain, "sent_at": now, "outcome": _CLAIMED}
    stale = (TLSReportSent.outcome == _CLAIMED) & (TLSReportSent.sent_at < now - STALE_CLAIM)
    key = [TLSReportSent.day, TLSReportSent.policy_domain]
    again = {"sent_at": now}
    if session.get_bind().dialect.name == "postgresql":
        pg = pg_insert(TLSReportSent).values(values)
        statement = pg.on_conflict_do_update(index_elements=key, set_=again, where=stale).returning(
            TLSReportSent.day
        )
    else:
        lite = sqlite_insert(TLSReportSent).values(values)
        statement = lite.on_conflict_do_update(
            index_elements=key, set_=again, where=stale
        ).returning(TLSReportSent.day)
    return session.execute(statement).first() is not None


def _release(day: date, domain: str) -> Callable[[sqlalchemy.orm.Session], None]:
    def work(session: sqlalchemy.orm.Session) -> None:
        session.execute(
            delete(TLSReportSent).where(
                TLSReportSent.day == day.isoformat(),
                TLSReportSent.policy_domain == domain,
                TLSReportSent.outcome == _CLAIMED,
            )
        )

    return work


async def send_due_reports(
    store: Store,
    settings: Settings,
    resolver: SecureResolver,
    keyring: Keyring,
    day: date,
    *,
    now: datetime | None = None,
    poster: HttpsPoster | None = None,
) -> list[tuple[str, str]]:
    """Send ``day``'s report to every counted domain that has none recorded yet; returns
    (domain, outcome) for each domain looked at. Outcomes starting with ``deferred`` are
    tried again by the next call."""
    now = now or queue.utcnow()
    poster = poster or HttpsPoster(resolver, settings.delivery.ca_file)
    counted = await counts_for(store, day)
    async with store.session() as session:
        done = set(
            (
                await session.execute(
                    select(TLSReportSent.policy_domain).where(
                        TLSReportSent.day == day.isoformat(), TLSReportSent.outcome != _CLAIMED
                    )
                )
            ).scalars()
        )
    outcomes: list[tuple[str, str]] = []
    for domain in sorted(counted):
        if domain in done:
            continue
        if not await store.write(partial(claim, day=day, domain=domain, now=now)):
            continue  # another worker has it
        try:
            outcome = await _send_one(store, settings, resolver, keyring, poster, day, domain, now)
        except BaseException:
            await store.write(_release(day, domain))
            raise
        outcomes.append((domain, outcome))
        log.info("tlsrpt_report", day=day.isoformat(), domain=domain, outcome=outcome)
    return outcomes


async def _send_one(
    store: Store,
    settings: Settings,
    resolver: SecureResolver,
    keyring: Keyring,
    poster: HttpsPoster,
    day: date,
    domain: str,
    now: datetime,
) -> str:
    record = await discover(resolver, domain)
    if record is None:
        await store.write(_release(day, domain))
        return "deferred: DNS did not answer for _smtp._tls"
    if not record.rua:
        await store.write(_finish(settings, day, domain, now, f"not sent: {record.problem}"))
        return f"not sent: {record.problem}"
    rows = (await counts_for(store, day, domain)).get(domain, [])
    report_id = report_id_for(day, domain, settings)
    data = report_bytes(build_report(day, domain, rows, settings, report_id))
    results: list[str] = []
    mails: list[tuple[Message, str]] = []
    temporary = 0
    for uri in record.rua:
        if uri.lower().startswith("mailto:"):
            address = mailto_address(uri) or ""  # read_record kept only usable URIs
            content = report_mail(settings, address, domain, day, report_id, data, now)
            message = queue.new_message(
                keyring,
                mail_from=settings.notify.from_,
                content=content,
                client_address=TLS_REPORT,
                now=now,
            )
            mails.append((message, address))
            results.append(f"{uri}: queued")
            continue
        posted = await poster.post(uri, data)
        temporary += posted.temporary
        results.append(f"{uri}: {'sent' if posted.ok else 'failed'}: {posted.detail}")
    if temporary == len(record.rua):
        await store.write(_release(day, domain))
        return "deferred: " + "; ".join(results)
    if record.problem:
        results.append(f"record: {record.problem}")
    outcome = "; ".join(results)
    await store.write(_finish(settings, day, domain, now, outcome, mails))
    return outcome


def _finish(
    settings: Settings,
    day: date,
    domain: str,
    now: datetime,
    outcome: str,
    mails: Sequence[tuple[Message, str]] = (),
) -> Callable[[sqlalchemy.orm.Session], None]:
    """Record the outcome and queue the report mails in one transaction: a report is queued
    exactly when its (day, domain) is marked done."""

    def work(session: sqlalchemy.orm.Session) -> None:
        row = session.get(TLSReportSent, (day.isoformat(), domain))
        if row is None:
            row = TLSReportSent(day=day.isoformat(), policy_domain=domain)
            session.add(row)
        row.sent_at, row.outcome = now, outcome
        for message, address in mails:
            session.add(message)
            session.flush()
            session.add(
                queue.new_job(
                    JobKind.MAIL,
                    address,
                    split_mailbox(address)[1].lower(),
                    now,
                    settings.delivery,
                    message_id=message.id,
                )
            )

    return work


# -- the daily job -----------------------------------------------------------------------


async def report_job(
    settings: Settings,
    store: Store,
    keyring: Keyring,
    stop: asyncio.Event,
    *,
    clock: Callable[[], datetime] = queue.utcnow,
    delay: timedelta | None = None,
) -> None:
    """``serve``'s worker role: yesterday's reports once today's start plus a random delay
    has passed, then hourly for those still due, until ``stop``. A failed run (the
    database away) is logged and the next one tries again."""
    if not settings.tlsrpt.enabled:
        return
    if delay is None:
        delay = timedelta(
            seconds=random.SystemRandom().uniform(0, MAX_REPORT_DELAY.total_seconds())
        )
    resolver = SecureResolver(settings.dns)
    while not stop.is_set():
        now = clock()
        start = datetime.combine(now.astimezone(UTC).date(), time(0), UTC) + delay
        wait = RETRY_INTERVAL
        if now >= start:
            try:
                await send_due_reports(
                    store, settings, resolver, keyring, start.date() - timedelta(days=1), now=now
                )
            except Exception as exc:
                log.error("tlsrpt_failed", error=(str(exc) or repr(exc)).splitlines()[0])
        else:
            wait = min(wait, start - now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait.total_seconds())
