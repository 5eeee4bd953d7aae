"""Console pages about signing in: the enrolment link, sign-in and sign-out, the language
switch, and the landing page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sigillo.portal.accounts import MAX_ADDRESS, normalise_address
from sigillo.portal.pages.base import form_text, utcnow
from sigillo.portal.passwords import MAX_LENGTH, check_new_password, problem_messages
from sigillo.staff import totp
from sigillo.staff.pages.base import (
    PREFIX,
    Console,
    Page,
    Visit,
    safe_next,
)
from sigillo.staff.roles import ORDER
from sigillo.staff.signin import Enrol, EnrolTarget, SignIn

HOME = PREFIX + "/"
PASSWORD_FIELD = MAX_LENGTH * 4


def grouped(secret: str) -> str:
    """The key in groups of four, as people copy it into an app by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def routes(console: Console) -> list[Route]:
    async def landing(page: Page) -> Response:
        # The first page of the navigation the member's roles open (the dashboard when
        # there is one); with none, a page that says who is signed in.
        allowed = console.nav_for(page.member)
        if allowed:
            return page.redirect(allowed[0].path)
        return page.render("home.html")

    async def login(request: Request, visit: Visit) -> Response:
        _ = visit.gettext
        if request.method == "GET":
            next_page = safe_next(request.query_params.get("next"))
            if visit.user is not None:
                return console.redirect(visit, next_page or HOME)
            ended = visit.expired or request.query_params.get("ended") == "1"
            notice = None
            if ended:
                notice = _("Your session has ended. Please sign in again.")
            elif request.query_params.get("signed_out") == "1":
                notice = _("You have signed out.")
            return console.render(
                visit, "login.html", next=next_page, email="", error=None, notice=notice
            )
        form = await console.form(request, visit)
        next_page = safe_next(form.get("next"))
        email = normalise_address(form_text(form.get("email"), MAX_ADDRESS))
        password = form_text(form.get("password"), PASSWORD_FIELD)
        code = form_text(form.get("code"), 16)
        result = await console.signin.sign_in(email, password, code, visit.client, utcnow())
        if result.outcome is SignIn.OK and result.cookie is not None:
            console.signed_in(visit, result.cookie)
            return console.redirect(visit, next_page or HOME)
        if result.outcome is SignIn.LOCKED:
            error = _(
                "Too many unsuccessful attempts. For your protection, signing in to this "
                "account is paused for 15 minutes."
            )
        else:
            error = _("The email address, the password or the code is not correct.")
        return console.render(
            visit, "login.html", status=401, next=next_page, email=email, error=error, notice=None
        )

    async def logout(request: Request, visit: Visit) -> Response:
        await console.form(request, visit)
        if visit.user is not None:
            await console.signin.sign_out(visit.user, visit.client, utcnow())
        console.signed_out(visit)
        return console.redirect(visit, f"{PREFIX}/login?signed_out=1")

    async def enrol(request: Request, visit: Visit) -> Response:
        _ = visit.gettext
        token = request.path_params["token"]
        now = utcnow()
        target = await console.signin.enrolment(token, now)
        if target is None:
            return console.render(
                visit,
                "notice.html",
                status=404,
                title=_("This enrolment link is no longer valid"),
                text=_(
                    "Enrolment links work once and for a limited time. Ask an administrator "
                    "for a new one."
                ),
            )
        if request.method == "GET":
            return _enrol_page(console, visit, target, errors=[])
        form = await console.form(request, visit)
        password = form_text(form.get("password"), PASSWORD_FIELD)
        confirm = form_text(form.get("password_confirm"), PASSWORD_FIELD)
        code = form_text(form.get("code"), 16)
        errors = problem_messages(
            visit.gettext, check_new_password(password, confirm, target.email)
        )
        if errors:
            return _enrol_page(console, visit, target, errors=errors, status=400)
        result = await console.signin.enrol(target, token, password, code, visit.client, now)
        if result.outcome is Enrol.WRONG_CODE:
            errors = [
                _(
                    "The code is not correct. Check that the phone's clock is right and type "
                    "the code the app shows now."
                )
            ]
            return _enrol_page(console, visit, target, errors=errors, status=400)
        if result.outcome is Enrol.GONE or result.cookie is None:
            return console.redirect(visit, request.url.path)
        console.signed_in(visit, result.cookie)
        return console.redirect(visit, HOME)

    return [
        console.page(HOME, landing, roles=ORDER),
        console.public(f"{PREFIX}/login", login, methods=("GET", "POST")),
        console.public(f"{PREFIX}/logout", logout, methods=("POST",)),
        console.public(f"{PREFIX}/enrol/{{token}}", enrol, methods=("GET", "POST")),
        console.public(f"{PREFIX}/lang", console.switch_language, methods=("POST",)),
    ]


def _enrol_page(
    console: Console, visit: Visit, target: EnrolTarget, *, errors: list[str], status: int = 200
) -> Response:
    _ = visit.gettext
    uri = totp.provisioning_uri(target.secret, target.email, console.settings.portal.base_url)
    qr = totp.qr_svg(uri, _("QR code for an authenticator app; the same key is written out below."))
    return console.render(
        visit,
        "enrol.html",
        status=status,
        email=target.email,
        secret=grouped(target.secret),
        uri=uri,
        qr=qr,
        errors=errors,
    )
