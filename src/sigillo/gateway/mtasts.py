"""MTA-STS (RFC 8461): discovery by TXT, the policy fetched over validated HTTPS, its cache.

What the cache promises, because a DNS or network attacker controls everything but the cache:
a policy is applied until its ``max_age`` runs out, whatever happens to the TXT record or the
policy host meanwhile (a missing TXT record or a failed fetch never removes it); it is replaced
only by a newer policy that was fetched and parsed successfully.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import h11
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sigillo.config import DeliverySettings
from sigillo.gateway.dnssec import SecureResolver
from sigillo.gateway.queue import utcnow
from sigillo.store.db import Store
from sigillo.store.models import MtaStsPolicy

log = structlog.get_logger("sigillo.mtasts")

MAX_POLICY_BYTES = 64 * 1024
"""RFC 8461 section 3.3: a policy body larger than this is not read."""
MAX_MAX_AGE = 31_557_600
"""One year: the largest ``max_age`` a policy may give (RFC 8461 section 3.2)."""
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
FETCH_INTERVAL = timedelta(minutes=5)
"""At most one fetch attempt per domain in this time, however many messages are waiting."""

Mode = Literal["enforce", "testing", "none"]
_MODE_BY_NAME: dict[str, Mode] = {"enforce": "enforce", "testing": "testing", "none": "none"}

_WSP = " \t"
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_TXT_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_AGE = re.compile(r"[0-9]{1,10}")


class PolicyError(ValueError):
    """A TXT record or policy that does not follow RFC 8461; the message says what is wrong."""


class FetchError(Exception):
    """The policy could not be fetched; ``kind`` says how, in one word.

    Kinds: ``dns``, ``connect``, ``tls`` (the certificate did not validate for
    ``mta-sts.<domain>``), ``handshake``, ``timeout``, ``redirect``, ``http-<status>``,
    ``http`` (a broken response), ``content-type``, ``too-large``, ``config``.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def result_type(self) -> str:
        """The RFC 8460 result type a TLS report gives this failure."""
        return "sts-webpki-invalid" if self.kind == "tls" else "sts-policy-fetch-error"


def _is_domain(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def normalize_domain(name: str) -> str:
    """Lower case without the root dot; PolicyError unless it is an LDH host name (A-labels)."""
    domain = name.strip().lower().removesuffix(".")
    if not domain or not _is_domain(domain):
        raise PolicyError(f"not a domain name: {name[:80]!r}")
    return domain


# --- discovery record (RFC 8461 section 3.1) ------------------------------------------------


@dataclass(frozen=True)
class StsTxt:
    id: str


def _is_sts_record(text: str) -> bool:
    # Records that do not start with the version are someone else's TXT data, not ours.
    rest = text.removeprefix("v=STSv1")
    return rest != text and (rest == "" or rest[0] in _WSP + ";")


def _parse_sts_record(text: str) -> StsTxt:
    parts = [part.strip(_WSP) for part in text.split(";")]
    if parts[0] != "v=STSv1":
        raise PolicyError(f"TXT record does not start with 'v=STSv1;': {text[:80]!r}")
    fields = parts[1:]
    if fields and fields[-1] == "":
        fields.pop()  # one trailing ";" is allowed
    if not fields:
        raise PolicyError("TXT record has no id field")
    ids = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or not _FIELD_NAME.fullmatch(name) or not _TXT_EXT_VALUE.fullmatch(value):
            raise PolicyError(f"TXT record has a malformed field {field[:80]!r}")
        if name == "id":
            if not _TXT_ID.fullmatch(value):
                raise PolicyError(f"TXT record id must be 1 to 32 letters or digits: {value!r}")
            ids.append(value)
    if len(ids) != 1:
        raise PolicyError("TXT record has no id field" if not ids else "TXT record has several ids")
    return StsTxt(ids[0])


def parse_txt(records: Sequence[str]) -> StsTxt | PolicyError | None:
    """The ``_mta-sts`` TXT answer: None when no record is an STSv1 record; a PolicyError
    (returned, not raised) when there are several or the one there is malformed."""
    candidates = [text for text in records if _is_sts_record(text)]
    if not candidates:
        return None
    if len(candidates) > 1:
        return PolicyError(f"{len(candidates)} STSv1 TXT records; exactly one is allowed")
    try:
        return _parse_sts_record(candidates[0])
    except PolicyError as exc:
        return exc


def txt_text(rdata: Any) -> str:
    """One TXT record's strings joined (RFC 8461 section 3.1); bytes that are not ASCII become
    U+FFFD, which no valid record contains."""
    return b"".join(rdata.strings).decode("ascii", errors="replace")


# --- policy (RFC 8461 section 3.2) ---------------------------------------------------------


@dataclass(frozen=True)
class StsPolicy:
    mode: Mode
    mx: tuple[str, ...]
    """Lower-case patterns: a host name, or ``*.`` and a domain."""
    max_age: int
    text: str
    """The policy as fetched: TLS reports quote its lines."""

    def matches(self, mx_host: str) -> bool:
        """RFC 8461 section 4.1: a ``*.`` pattern stands for exactly one whole left-most label."""
        host = mx_host.strip().lower().removesuffix(".")
        if not host:
            return False
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, dot, parent = host.partition(".")
                if first and dot and parent == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def _mx_pattern(value: str) -> str:
    pattern = value.lower().removesuffix(".")
    domain = pattern[2:] if pattern.startswith("*.") else pattern
    if not domain or not _is_domain(domain):
        raise PolicyError(f"mx {value[:80]!r} is not a host name or '*.' and a domain")
    return pattern


def parse_policy(text: str) -> StsPolicy:
    """Parse a policy body; raise PolicyError naming the line at fault.

    Lines end in CRLF or LF; blank lines are skipped; keys other than version, mode, mx and
    max_age are ignored (they may be extensions). version comes first; version, mode and
    max_age each appear exactly once, and mx at least once unless the mode is none.
    """
    lines = text.split("\n")
    fields: list[tuple[int, str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r").rstrip(_WSP)
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not _FIELD_NAME.fullmatch(key):
            raise PolicyError(f"line {number}: not 'key: value': {line[:80]!r}")
        value = value.lstrip(_WSP)
        if not value:
            raise PolicyError(f"line {number}: {key} has no value")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value if c != "\t"):
            raise PolicyError(f"line {number}: control character in {key}")
        fields.append((number, key, value))

    if not fields:
        raise PolicyError("policy is empty")
    if fields[0][1:] != ("version", "STSv1"):
        raise PolicyError("policy must start with 'version: STSv1'")
    single: dict[str, str] = {}
    mx: list[str] = []
    for number, key, value in fields:
        if key == "mx":
            try:
                mx.append(_mx_pattern(value))
            except PolicyError as exc:
                raise PolicyError(f"line {number}: {exc}") from None
        elif key in ("version", "mode", "max_age"):
            if key in single:
                raise PolicyError(f"line {number}: {key} given twice")
            single[key] = value

    mode = single.get("mode")
    if mode is None:
        raise PolicyError("policy has no mode")
    checked = _MODE_BY_NAME.get(mode)
    if checked is None:
        raise PolicyError(f"mode must be enforce, testing or none, not {mode[:40]!r}")
    age_text = single.get("max_age")
    if age_text is None:
        raise PolicyError("policy has no max_age")
    if not _MAX_AGE.fullmatch(age_text) or int(age_text) > MAX_MAX_AGE:
        raise PolicyError(f"max_age must be 0 to {MAX_MAX_AGE} seconds, not {age_text[:40]!r}")
    if not mx and mode != "none":
        raise PolicyError(f"a {mode} policy needs at least one mx")
    return StsPolicy(checked, tuple(dict.fromkeys(mx)), int(age_text), text)


# --- fetch (RFC 8461 section 3.3) ----------------------------------------------------------


def _tls_context(ca_file: str) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError("config", f"cannot load ca_file {ca_file!r}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in headers if key == name]


def _check_response(host: str, response: h11.Response) -> None:
    status = response.status_code
    if 300 <= status < 400:
        location = "".join(_header(response.headers, b"location"))[:120]
        raise FetchError("redirect", f"{host} answered {status} to {location!r}; not followed")
    if status != 200:
        raise FetchError(f"http-{status}", f"{host} answered {status}, not 200")
    types = _header(response.headers, b"content-type")
    if len(types) != 1:
        raise FetchError("content-type", f"{host} sent {len(types)} Content-Type headers")
    media = types[0].split(";", 1)[0].strip(_WSP).lower()
    if media != "text/plain":
        raise FetchError("content-type", f"{host} sent {types[0][:80]!r}, not text/plain")
    for length in _header(response.headers, b"content-length"):
        if length.isdigit() and int(length) > MAX_POLICY_BYTES:
            raise FetchError("too-large", f"{host} announced {length} bytes; the cap is 64 KiB")


async def _exchange(host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=WELL_KNOWN_PATH,
        headers=[
            ("Host", host),
            ("User-Agent", "sigillo"),
            ("Accept", "text/plain"),
            ("Connection", "close"),
        ],
    )
    for outgoing in (request, h11.EndOfMessage()):
        writer.write(conn.send(outgoing) or b"")
    await writer.drain()
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(16384))
        elif isinstance(event, h11.Response):
            _check_response(host, event)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_POLICY_BYTES:
                raise FetchError("too-large", f"{host} sent more than 64 KiB")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        elif isinstance(event, h11.InformationalResponse):
            continue  # 1xx: the final response follows
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError("http", f"{host} closed the connection before the response ended")
        else:
            raise FetchError("http", f"{host}: unexpected HTTP event {type(event).__name__}")


async def _get(host: str, resolver: SecureResolver, ca_file: str, port: int) -> bytes:
    # The policy host's address comes from the configured resolvers: the system's resolver
    # may be a different, unvalidated view of DNS.
    addresses, _secure, status = await resolver.addresses(host)
    if not addresses:
        raise FetchError("dns", f"{host} has no address ({status})")
    ctx = _tls_context(ca_file)
    failures: list[FetchError] = []
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=ctx, server_hostname=host
            )
        except ssl.SSLCertVerificationError as exc:
            failures.append(FetchError("tls", f"{host} at {address}: {exc.verify_message}"))
            continue
        except ssl.SSLError as exc:
            failures.append(FetchError("handshake", f"{host} at {address}: {exc.reason}"))
            continue
        except OSError as exc:
            failures.append(FetchError("connect", f"{host} at {address}: {exc.strerror or exc}"))
            continue
        try:
            return await _exchange(host, reader, writer)
        except h11.RemoteProtocolError as exc:
            raise FetchError("http", f"{host} sent a broken HTTP response: {exc}") from None
        except OSError as exc:
            raise FetchError("http", f"{host}: connection failed mid-response: {exc}") from None
        finally:
            # Abort rather than wait for the server's close_notify: the response is complete
            # (or refused), and a server that never closes must not hold the fetch open.
            writer.transport.abort()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    # A certificate that does not validate says more than a refused connection elsewhere.
    raise next((f for f in failures if f.kind == "tls"), failures[-1])


async def fetch_policy(
    domain: str,
    resolver: SecureResolver,
    ca_file: str,
    timeout: float = 60.0,  # noqa: ASYNC109 - one budget for DNS, connect, TLS and HTTP
    port: int = 443,
) -> StsPolicy:
    """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and parse it.

    Raises FetchError (nothing usable came back) or PolicyError (the body is not a policy).
    The certificate must be valid for ``mta-sts.<domain>`` under ``ca_file`` (or the system's
    trust store when empty); redirects are refused; the whole exchange runs under ``timeout``.
    """
    host = f"mta-sts.{normalize_domain(domain)}"
    try:
        async with asyncio.timeout(timeout):
            body = await _get(host, resolver, ca_file, port)
    except TimeoutError:
        raise FetchError("timeout", f"{host} did not answer within {timeout:g}s") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8 text") from None
    return parse_policy(text)


# --- policy state and cache (RFC 8461 sections 3.3 and 5) ------------------------------------


@dataclass(frozen=True)
class StsState:
    policy: StsPolicy | None
    """The policy to apply; None: the domain has no MTA-STS (or no valid policy is known)."""
    fresh: bool
    """The policy was fetched in this call."""
    error: str | None = None
    """Why discovery or a fetch failed, even when a cached policy still applies."""
    result_type: str | None = None
    """RFC 8460 type of ``error``: ``sts-policy-fetch-error``, ``sts-policy-invalid`` or
    ``sts-webpki-invalid``; None when it is no policy failure (a DNS lookup that failed)."""


@dataclass(frozen=True)
class _Cached:
    policy: StsPolicy | None
    """Unexpired at load time, else None."""
    policy_id: str | None
    expires_at: datetime | None
    last_attempt_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class _Outcome:
    policy: StsPolicy | None = None
    error: str | None = None
    result_type: str | None = None
    attempted: bool = True
    """False: another attempt happened too recently, none was made."""


_RESULT_TYPES = ("sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid")


def _split_error(stored: str | None) -> tuple[str | None, str | None]:
    """A stored ``last_error`` is ``<result type>: <what happened>``."""
    if not stored:
        return None, None
    kind, _, _ = stored.partition(": ")
    return stored, kind if kind in _RESULT_TYPES else None


class MtaSts:
    """The MTA-STS policy of recipient domains, as RFC 8461 section 5 has a sender apply it."""

    def __init__(
        self,
        store: Store,
        resolver: SecureResolver,
        settings: DeliverySettings,
        clock: Callable[[], datetime] = utcnow,
        port: int = 443,
        *,
        fetch_interval: timedelta = FETCH_INTERVAL,
        timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.ca_file = settings.ca_file
        self.clock = clock
        self.port = port
        self.fetch_interval = fetch_interval
        self.timeout = timeout
        # One fetch per domain at a time in this process; concurrent callers share it.
        self._inflight: dict[str, asyncio.Task[_Outcome]] = {}

    async def policy(self, domain: str) -> StsState:
        try:
            domain = normalize_domain(domain)
        except PolicyError as exc:
            return StsState(None, fresh=False, error=str(exc))
        txt, txt_error, txt_type = await self._discover(domain)
        cached = await self._load(domain)

        if txt is None:
            # No usable TXT answer: a valid cached policy still binds (section 3.3), so that
            # an attacker who suppresses the record cannot switch MTA-STS off.
            if cached.policy is not None:
                return StsState(cached.policy, False, txt_error, txt_type)
            return StsState(None, False, txt_error, txt_type)

        if cached.policy is not None and cached.policy_id == txt.id:
            if self._refresh_due(cached):
                self._start_fetch(domain, txt.id)
            return StsState(cached.policy, False)

        # No valid policy for this id: fetch it, unless the last attempt was too recent.
        if domain in self._inflight or self._may_attempt(cached.last_attempt_at):
            outcome = await asyncio.shield(self._start_fetch(domain, txt.id))
            if outcome.policy is not None:
                return StsState(outcome.policy, True)
            if outcome.attempted:
                return StsState(cached.policy, False, outcome.error, outcome.result_type)
            # Another process took the slot: it may have fetched the policy by now.
            cached = await self._load(domain)
            if cached.policy is not None and cached.policy_id == txt.id:
                return StsState(cached.policy, False)
        error, result_type = _split_error(cached.last_error)
        if error is None:
            error = f"policy id {txt.id} not fetched yet: the last attempt was too recent"
        return StsState(cached.policy, False, error, result_type)

    async def close(self) -> None:
        """Stop background refreshes (a refresh that is cut short is retried later)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def settle(self) -> None:
        """Wait until the fetches and refreshes under way have finished."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def _discover(self, domain: str) -> tuple[StsTxt | None, str | None, str | None]:
        """(record, error, result type); a record only when exactly one valid one is there."""
        answer = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
        if answer.status in ("nxdomain", "nodata"):
            return None, None, None
        if answer.status != "ok":
            return None, f"_mta-sts.{domain} TXT lookup failed: {answer.reason}", None
        parsed = parse_txt([txt_text(r) for r in answer.records])
        if isinstance(parsed, PolicyError):
            return None, f"_mta-sts.{domain}: {parsed}", "sts-policy-invalid"
        return parsed, None, None

    async def _load(self, domain: str) -> _Cached:
        async with self.store.session() as session:
            row = await session.get(MtaStsPolicy, domain)
        if row is None:
            return _Cached(None, None, None, None, None)
        policy = None
        now = self.clock()
        if row.policy_text is not None and row.expires_at is not None and row.expires_at > now:
            try:
                policy = parse_policy(row.policy_text)
            except PolicyError:
                log.warning("mta_sts_cache_unreadable", domain=domain)
        return _Cached(policy, row.policy_id, row.expires_at, row.last_attempt_at, row.last_error)

    def _refresh_due(self, cached: _Cached) -> bool:
        # Refetch before expiry (section 3.3) once less than a quarter of max_age is left,
        # so that a domain whose policy host is briefly down never drops out of the cache.
        if cached.policy is None or cached.expires_at is None:
            return False
        now = self.clock()
        left = cached.expires_at - now
        if left * 4 >= timedelta(seconds=cached.policy.max_age):
            return False
        return self._may_attempt(cached.last_attempt_at)

    def _may_attempt(self, last: datetime | None) -> bool:
        """No fetch attempt within ``fetch_interval`` (a last attempt in the future means the
        clock went back: it does not count)."""
        now = self.clock()
        return last is None or last > now or now - last >= self.fetch_interval

    def _start_fetch(self, domain: str, policy_id: str) -> asyncio.Task[_Outcome]:
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.create_task(self._fetch(domain, policy_id))
            self._inflight[domain] = task
            task.add_done_callback(lambda done: self._forget(domain, done))
        return task

    def _forget(self, domain: str, task: asyncio.Task[_Outcome]) -> None:
        if self._inflight.get(domain) is task:
            del self._inflight[domain]
        # A refresh nobody awaits must not fail silently (the store may be down).
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("mta_sts_fetch_failed", domain=domain, error=type(exc).__name__)

    async def _fetch(self, domain: str, policy_id: str) -> _Outcome:
        if not await self._claim(domain):
            return _Outcome(attempted=False)
        try:
            policy = await fetch_policy(
                domain, self.resolver, self.ca_file, self.timeout, self.port
            )
        except FetchError as exc:
            outcome = _Outcome(error=str(exc), result_type=exc.result_type)
        except PolicyError as exc:
            outcome = _Outcome(error=f"invalid policy: {exc}", result_type="sts-policy-invalid")
        else:
            outcome = _Outcome(policy=policy)
        log.info(
            "mta_sts_fetch",
            domain=domain,
            policy_id=policy_id,
            mode=policy.mode if outcome.policy else None,
            error=outcome.error,
        )
        await self._record(domain, policy_id, outcome)
        return outcome

    async def _claim(self, domain: str) -> bool:
        """Take the domain's fetch slot in the store: False when an attempt (by any process)
        was made within ``fetch_interval``."""
        now = self.clock()
        interval = self.fetch_interval

        def claim(session: Session) -> bool:
            row = session.get(MtaStsPolicy, domain, with_for_update=True)
            if row is None:
                session.add(MtaStsPolicy(domain=domain, last_attempt_at=now))
                session.flush()
                return True
            last = row.last_attempt_at
            if last is not None and last <= now and now - last < interval:
                return False
            row.last_attempt_at = now
            return True

        try:
            return await self.store.write(claim)
        except IntegrityError:
            return False  # another process inserted the row first: its attempt counts

    async def _record(self, domain: str, policy_id: str, outcome: _Outcome) -> None:
        now = self.clock()

        def record(session: Session) -> None:
            row = session.get(MtaStsPolicy, domain)
            if row is None:
                row = MtaStsPolicy(domain=domain, last_attempt_at=now)
                session.add(row)
            policy = outcome.policy
            if policy is None:
                # The cached policy (if any) stays exactly as it was.
                row.last_error = f"{outcome.result_type}: {outcome.error}"
                return
            row.policy_id = policy_id
            row.mode = policy.mode
            row.mx = list(policy.mx)
            row.max_age = policy.max_age
            row.policy_text = policy.text
            row.fetched_at = now
            row.expires_at = now + timedelta(seconds=policy.max_age)
            row.last_error = None

        await self.store.write(record)
