"""The portal web application. This release serves the notification link's landing check
and health; sign-in and the conversation pages come with the portal itself."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select

from sigillo.config import Settings
from sigillo.notify import token_hash
from sigillo.store.db import Store
from sigillo.store.models import PortalToken

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(settings: Settings, store: Store) -> FastAPI:
    app = FastAPI(title="sigillo portal", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/c/{token}", response_class=HTMLResponse)
    async def landing(token: str) -> HTMLResponse:
        # The link alone never shows content; it only tells a valid link from a wrong one.
        async with store.session() as session:
            row = await session.execute(
                select(PortalToken.token_hash).where(PortalToken.token_hash == token_hash(token))
            )
        if row.first() is None:
            raise HTTPException(status_code=404)
        return HTMLResponse(
            "<!doctype html><html lang=en><meta charset=utf-8>"
            "<title>Secure message</title><h1>You have a secure message</h1>"
            "<p>Sign in to read it.</p></html>"
        )

    return app
