"""The page "Is this email really from us?": anyone, signed in or not, uploads an email's
source (a .eml file) or pastes it, and gets the checker's verdict and findings.

Public, because people who got a suspicious email may have no account. Nothing is stored or
logged: the message is checked in memory and forgotten. The check is CPU-bound, so each
client address has a small allowance of checks (a token bucket) and only a few checks run at
once, in worker threads, whatever the number of clients.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio.to_thread
import structlog
from anyio import CapacityLimiter
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sigillo.gateway.addresses import AddressError, split_mailbox
from sigillo.phishing import Checker, CheckPolicy, Finding, Report
from sigillo.phishing.findings import explained
from sigillo.portal.accounts import MAX_ADDRESS, normalise_address
from sigillo.portal.i18n import Formats
from sigillo.portal.pages.base import FORM_LIMIT, BodyTooLarge, Portal, Visitor, drain, form_text

log = structlog.get_logger("sigillo.portal")

PATH = "/check"
BURST = 10
"""Checks one client may run back to back..."""
REFILL_SECONDS = 30.0
"""... and then one more every this many seconds."""


@dataclass
class ClientAllowance:
    """A token bucket per client: ``burst`` checks at once, then one per ``every`` seconds.

    IPv6 clients count per /64, the block one subscriber usually holds. Kept in memory for
    at most ``max_clients`` clients: a full bucket is forgotten (it is as good as new), then
    the least recently seen."""

    burst: int = BURST
    every: float = REFILL_SECONDS
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _levels: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    """client -> (tokens left, when counted); ordered from least to most recently seen."""

    def take(self, client: str) -> bool:
        """One check for ``client``, if its allowance has one left."""
        key = _client_key(client)
        now = self.clock()
        tokens = self._tokens(key, now)
        allowed = tokens >= 1
        self._levels.pop(key, None)
        self._levels[key] = (tokens - 1 if allowed else tokens, now)
        if len(self._levels) > self.max_clients:
            self._forget(now)
        return allowed

    def _tokens(self, key: str, now: float) -> float:
        left, at = self._levels.get(key, (float(self.burst), now))
        return min(float(self.burst), left + max(0.0, now - at) / self.every)

    def _forget(self, now: float) -> None:
        for key in [k for k in self._levels if self._tokens(k, now) >= self.burst]:
            del self._levels[key]
        while len(self._levels) > self.max_clients:
            del self._levels[next(iter(self._levels))]


def _client_key(client: str) -> str:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def default_slots() -> int:
    """Half the cores check mail at most; the rest keep serving pages."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class CheckGate:
    """What stands between the page and the CPU: each client's allowance, and a bound on the
    checks running at once (waiting ones hold a request, not a core)."""

    make_checker: Callable[[], Checker]
    """Called for each check: the policy follows sigillo's DKIM key file, which the worker
    may create or replace while the portal runs."""
    allowance: ClientAllowance = field(default_factory=ClientAllowance)
    slots: CapacityLimiter = field(default_factory=lambda: CapacityLimiter(default_slots()))

    async def check(self, raw: bytes, recipient: str | None) -> Report:
        return await anyio.to_thread.run_sync(self._check, raw, recipient, limiter=self.slots)

    def _check(self, raw: bytes, recipient: str | None) -> Report:
        try:
            checker = self.make_checker()
        except Exception as exc:
            # Unchecked is never clean: the visitor is told the email is not verified, the
            # operator why (the config's fault: nothing of the message is in it).
            log.error("check_unavailable", error=f"{type(exc).__name__}: {exc}")
            return Report("errored", (Finding("check-error", ""),))
        return checker.check(raw, recipient)


def plausible_address(value: str) -> bool:
    try:
        split_mailbox(value)
    except AddressError:
        return False
    return True


def routes(portal: Portal, gate: CheckGate | None = None) -> list[Route]:
    if gate is None:
        gate = CheckGate(lambda: Checker(CheckPolicy.from_settings(portal.settings)))
    max_size = portal.settings.smtp.max_message_size

    def page(
        visitor: Visitor,
        *,
        status: int = 200,
        errors: list[str] | None = None,
        report: Report | None = None,
        recipient: str = "",
    ) -> Response:
        return portal.render(
            visitor,
            "check.html",
            status=status,
            here=PATH,
            errors=errors or [],
            verdict=report.verdict if report else None,
            findings=explained(report.findings, visitor.lang) if report else [],
            recipient=visitor.user.address if visitor.user else recipient,
            max_size=Formats(visitor.lang).size(max_size),
            report_address=portal.settings.phishing.report_address,
        )

    async def refused(request: Request, response: Response) -> Response:
        # Read the rest of the upload so the browser shows the page rather than a reset.
        if not await drain(request):
            response.headers["Connection"] = "close"
        return response

    async def check(request: Request) -> Response:
        visitor = await portal.visitor(request)
        if request.method == "GET":
            return page(visitor)
        _ = visitor.gettext
        too_large = _("The email is larger than we can check ({size}).").format(
            size=Formats(visitor.lang).size(max_size)
        )
        # Counted before the body is read: parsing a large upload costs too.
        if not gate.allowance.take(visitor.client):
            busy = _(
                "You have checked many emails in a short time. Please wait a minute and try again."
            )
            return await refused(request, page(visitor, status=429, errors=[busy]))
        try:
            form = await portal.form(request, visitor, limit=max_size + FORM_LIMIT, files=1)
        except BodyTooLarge:
            return await refused(request, page(visitor, status=413, errors=[too_large]))
        try:
            pasted = form_text(form.get("source"), max_size)
            upload = form.get("eml")
            uploaded = await upload.read(max_size + 1) if isinstance(upload, UploadFile) else b""
            given = normalise_address(form_text(form.get("recipient"), MAX_ADDRESS))
        finally:
            await form.close()

        errors = []
        if pasted.strip() and uploaded:
            errors.append(_("Paste the source or choose a file, not both."))
        elif not pasted.strip() and not uploaded:
            errors.append(_("Paste the email's source or choose its .eml file."))
        if visitor.user is None and given and not plausible_address(given):
            errors.append(_("The address you gave us does not look like an email address."))
        if errors:
            return page(visitor, status=400, errors=errors, recipient=given)
        raw = uploaded or pasted.encode()
        if len(raw) > max_size:
            return page(visitor, status=413, errors=[too_large], recipient=given)
        recipient = visitor.user.address if visitor.user else given or None
        report = await gate.check(raw, recipient)
        return page(visitor, report=report, recipient=given)

    return [Route(PATH, check, methods=["GET", "POST"])]
