"""The portal web application: built from settings and a store, never at import time. The
staff console is mounted in it under ``/staff`` (``sigillo.staff.app``)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

import structlog
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sigillo.config import Settings
from sigillo.portal.accounts import Accounts
from sigillo.portal.i18n import Formats
from sigillo.portal.pages import account, check, conversation
from sigillo.portal.pages.base import OUTAGES, BodyTooLarge, Portal, SignInRequired, drain
from sigillo.portal.passwords import PasswordHasher
from sigillo.staff.app import create_console
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store

log = structlog.get_logger("sigillo.portal")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
)
"""No script at all, no inline style, nothing from another origin; forms post only here."""


def security_headers(https: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return headers


class SecurityHeaders:
    """Adds the security headers to every response, error pages and static files included.
    Plain ASGI: it touches only the response start, never buffers a body."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.names = {name for name, _ in self.raw}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in self.names
                ]
                message["headers"] = kept + self.raw
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    settings: Settings,
    store: Store,
    keyring: Keyring,
    *,
    hasher: PasswordHasher | None = None,
    on_queued: Callable[[], None] | None = None,
) -> FastAPI:
    """``hasher`` defaults to production argon2id parameters; tests pass cheap ones."""
    hasher = hasher or PasswordHasher()
    accounts = Accounts(store, hasher)
    portal = Portal(settings, store, keyring, accounts, on_queued)
    static = resources.files("sigillo.portal").joinpath("static")
    app = FastAPI(title="sigillo portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.portal = portal
    for route in [*account.routes(portal), *conversation.routes(portal), *check.routes(portal)]:
        app.router.routes.append(route)
    app.router.routes.append(Mount("/static", StaticFiles(directory=str(static)), name="static"))
    # The staff console: its own pages, sessions and error handling, under these headers.
    app.router.routes.append(Mount("/staff", create_console(settings, store, keyring, hasher)))
    headers = security_headers(settings.portal.https)

    app.add_middleware(SecurityHeaders, headers=headers)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)  # none; answered so browsers stop asking

    @app.get("/staff", include_in_schema=False)
    async def console_home() -> Response:
        return RedirectResponse("/staff/", status_code=303)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def error_page(request: Request, status: int) -> Response:
        try:
            visitor = await portal.visitor(request)
        except OUTAGES:
            visitor = portal.stranger(request)
        _ = visitor.gettext
        pages = {
            400: (_("Something in the request was not right"), _("Please go back and try again.")),
            403: (
                _("This form has expired"),
                _(
                    "For your protection the form could not be accepted. Go back, reload the "
                    "page and try again."
                ),
            ),
            404: (
                _("Page not found"),
                _(
                    "There is nothing here, or it is not yours to see. Check the link in your "
                    "latest notification email."
                ),
            ),
            413: (
                _("Too large"),
                _("The message and its attachments are larger than allowed ({size}).").format(
                    size=Formats(visitor.lang).size(settings.portal.max_upload_size)
                ),
            ),
            503: (
                _("Temporarily unavailable"),
                _(
                    "The secure portal cannot be reached right now. Nothing was lost; please "
                    "try again in a few minutes."
                ),
            ),
        }
        title, text = pages.get(status, (_("Something went wrong"), _("Please try again later.")))
        return portal.render(
            visitor, "notice.html", status=status, title=title, text=text, link=None
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return await error_page(request, exc.status_code)

    @app.exception_handler(SignInRequired)
    async def sign_in_first(request: Request, exc: SignInRequired) -> Response:
        visitor = await portal.visitor(request)
        ended = "&ended=1" if visitor.expired else ""
        return portal.redirect(visitor, f"/login?next={exc.after}{ended}")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> Response:
        response = await error_page(request, 413)
        if not await drain(request):
            response.headers["Connection"] = "close"
        return response

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.error("portal_store_unavailable", error=str(exc).splitlines()[0] if str(exc) else "")
        return await error_page(request, 503)

    # A database that is down or unreachable: a plain "try again" page, not a crash.
    for outage in OUTAGES:
        app.add_exception_handler(outage, unavailable)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        # Logged for the operator with its type only: a message or traceback could carry
        # content; the visitor gets a plain page, never a stack trace.
        log.error("portal_error", path=request.url.path, error=type(exc).__name__)
        return await error_page(request, 500)

    return app
