"""The headless-Chromium harness (tests.peers.browser) works against pages served over a socket.

The pages come from a small `http.server` in a thread, every response with the strict CSP the
portal sends, so the harness is proven under the conditions the portal's tests will have.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Error, Page, ViewportSize, expect

from tests.peers import browser as harness
from tests.peers.browser import DESKTOP, PHONE, axe_violations, chromium, new_page, screenshot

# One Chromium serves the module (a launch takes about half a second); each test gets a fresh
# context, so no cookies or storage carry over. The browser lives in the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")

CSP = "default-src 'none'; style-src 'self'"

_STYLE = b"body { color: rgb(17, 34, 51); background: #fff; } .tall { height: 2400px; }"


def _html(body: str, *, lang: str | None = "en") -> bytes:
    lang_attr = f' lang="{lang}"' if lang else ""
    return (
        f'<!doctype html><html{lang_attr}><head><meta charset="utf-8"><title>sigillo</title>'
        f'<link rel="stylesheet" href="/style.css"></head><body><main>{body}</main></body></html>'
    ).encode()


_PAGES = {
    # The inline script must not run: it shows the CSP is in force.
    "/form": _html(
        '<h1>Send</h1><form method="post" action="/submit">'
        '<label for="name">Name</label><input id="name" name="name">'
        '<button type="submit">Send</button></form>'
        "<script>document.title = 'script ran';</script>"
    ),
    "/labelled": _html('<h1>Code</h1><label for="code">Code</label><input id="code" name="code">'),
    "/unlabelled": _html('<h1>Code</h1><input name="code">'),
    "/tall": _html('<h1>Long</h1><div class="tall">sigillo</div>'),
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Site:
    base_url: str
    requests: list[Request] = field(default_factory=list)

    def last(self, path: str) -> Request:
        return [request for request in self.requests if request.path == path][-1]


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self, body: bytes = b"") -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            site.requests.append(Request(self.command, self.path, headers, body))

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._record()
            if self.path == "/style.css":
                self._send(200, "text/css", _STYLE)
            elif self.path == "/lang":
                language = self.headers.get("Accept-Language", "")
                self._send(200, "text/html; charset=utf-8", _html(f"<h1>{language}</h1>"))
            elif self.path in _PAGES:
                self._send(200, "text/html; charset=utf-8", _PAGES[self.path])
            else:
                self._send(404, "text/plain", b"not found")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._record(body)
            name = parse_qs(body.decode()).get("name", [""])[0]
            self._send(200, "text/html; charset=utf-8", _html(f"<h1>Sent by {name}</h1>"))

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest's output to the tests' own

    return Handler


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """An HTTP server on an ephemeral loopback port, serving `_PAGES` with `CSP`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    port = server.server_address[1]
    site = Site(base_url=f"http://127.0.0.1:{port}")
    server.RequestHandlerClass = _handler(site)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="browser-harness-site"
    )
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, site: Site) -> AsyncIterator[Page]:
    context, page = await new_page(browser, base_url=site.base_url)
    try:
        yield page
    finally:
        await context.close()


async def test_csp_page_loads_and_form_submits(page: Page, site: Site) -> None:
    await page.goto("/form")
    # The stylesheet ('self') applies; the inline script ('none') does not run.
    await expect(page.locator("body")).to_have_css("color", "rgb(17, 34, 51)")
    assert await page.title() == "sigillo"

    await page.get_by_label("Name").fill("Ada")
    await page.get_by_role("button", name="Send").click()

    await expect(page.get_by_role("heading")).to_have_text("Sent by Ada")
    assert page.url == f"{site.base_url}/submit"
    assert site.last("/submit").body == b"name=Ada"


async def test_csp_blocks_script_tags(page: Page) -> None:
    await page.goto("/labelled")
    # Why axe_violations evaluates axe instead of adding it as a <script>: the CSP applies.
    with pytest.raises(Error, match="Content Security Policy"):
        await page.add_script_tag(content="window.sigillo = 1;")
    assert await page.evaluate("typeof window.sigillo") == "undefined"


async def test_axe_reports_an_unlabelled_input(page: Page) -> None:
    await page.goto("/unlabelled")

    violations = await axe_violations(page)

    assert [violation["id"] for violation in violations] == ["label"]
    assert violations[0]["impact"] == "critical"
    assert violations[0]["targets"] == ["input"]


async def test_axe_passes_a_labelled_page(page: Page) -> None:
    await page.goto("/labelled")
    assert await axe_violations(page) == []
    # A navigation drops the injected axe: it must be loaded again.
    await page.goto("/unlabelled")
    assert [v["id"] for v in await axe_violations(page)] == ["label"]


async def test_axe_rules_select_the_tags(page: Page) -> None:
    await page.goto("/unlabelled")
    # "label" is tagged wcag2a (level A), not wcag2aa.
    assert await axe_violations(page, rules=("wcag2aa",)) == []


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
async def test_screenshot_is_a_full_page_png(
    browser: Browser, site: Site, tmp_path: Path, viewport: ViewportSize
) -> None:
    context, page = await new_page(browser, viewport=viewport, base_url=site.base_url)
    try:
        await page.goto("/tall")
        path = tmp_path / "shots" / "tall.png"
        await screenshot(page, path)
    finally:
        await context.close()

    png = path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # The IHDR chunk comes first: width and height right after its type.
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width == viewport["width"]
    assert height > 2400 > viewport["height"]


@pytest.mark.parametrize("locale", ["en-US", "de-DE", "fr-CH"])
async def test_accept_language_follows_the_locale(
    browser: Browser, site: Site, locale: str
) -> None:
    context, page = await new_page(browser, locale=locale, base_url=site.base_url)
    try:
        await page.goto("/lang")
        await expect(page.get_by_role("heading")).to_have_text(locale)
        assert await page.evaluate("navigator.language") == locale
    finally:
        await context.close()
    assert site.last("/lang").headers["accept-language"] == locale


async def test_missing_chromium_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(RuntimeError, match="/nonexistent/chromium"):
        async with chromium():
            pass
