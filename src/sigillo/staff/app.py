"""The staff console: an application of its own, mounted by the portal under ``/staff``.

It shares the portal's security headers (the portal's middleware wraps it), its form and
password handling, and its session rules, with its own cookie, its own session table and
its own form-token key. Its pages come from the modules in ``sigillo.staff.pages.PAGES``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from sigillo.config import Settings
from sigillo.portal.pages.base import OUTAGES, BodyTooLarge, drain
from sigillo.portal.passwords import PasswordHasher
from sigillo.staff.pages import PAGES
from sigillo.staff.pages.base import Console, NotAllowed, SignInRequired
from sigillo.store.crypto import Keyring
from sigillo.store.db import Store

log = structlog.get_logger("sigillo.staff")


def create_console(
    settings: Settings, store: Store, keyring: Keyring, hasher: PasswordHasher
) -> Starlette:
    """The console application; mount it at ``/staff``."""
    console = Console(settings, store, keyring, hasher)
    routes: list[BaseRoute] = []
    for module in PAGES:
        routes.extend(module.routes(console))
        console.nav.extend(getattr(module, "NAV", ()))
    static = resources.files("sigillo.staff").joinpath("static")
    routes.append(Mount("/static", StaticFiles(directory=str(static)), name="static"))

    async def error(request: Request, status: int) -> Response:
        try:
            visit = await console.visit(request)
        except OUTAGES:
            visit = console.stranger(request)
        return console.error_page(visit, status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return await error(request, exc.status_code)

    async def sign_in_first(request: Request, exc: SignInRequired) -> Response:
        return console.sign_in_redirect(await console.visit(request), exc.after)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return console.not_allowed(await console.visit(request))

    async def too_large(request: Request, exc: Exception) -> Response:
        response = await error(request, 413)
        if not await drain(request):
            response.headers["Connection"] = "close"
        return response

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.error("staff_store_unavailable", error=str(exc).splitlines()[0] if str(exc) else "")
        return await error(request, 503)

    async def crashed(request: Request, exc: Exception) -> Response:
        # Its type only: a message could carry personal data; the member gets a plain page.
        log.error("staff_error", path=request.url.path, error=type(exc).__name__)
        return await error(request, 500)

    handlers: dict[Any, Any] = {
        HTTPException: http_error,
        SignInRequired: sign_in_first,
        NotAllowed: not_allowed,
        BodyTooLarge: too_large,
        Exception: crashed,
    }
    for outage in OUTAGES:
        handlers[outage] = unavailable
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.console = console
    return app
