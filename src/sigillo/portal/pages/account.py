"""Pages about the account: first visit from a notification link, sign-in and sign-out,
forgotten and changed passwords, the security phrase, the language switch."""

from __future__ import annotations

from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sigillo.portal.accounts import (
    MAX_ADDRESS,
    PHRASE_MAX,
    PasswordChange,
    PhraseProblem,
    SignIn,
    check_phrase,
    clean_phrase,
    normalise_address,
    phrase_messages,
    phrase_of,
)
from sigillo.portal.pages.base import (
    Portal,
    Visitor,
    form_text,
    safe_next,
    utcnow,
)
from sigillo.portal.passwords import MAX_LENGTH, check_new_password, problem_messages


async def new_password(
    portal: Portal, request: Request, visitor: Visitor, address: str
) -> tuple[str, list[str]]:
    """The new password a form proposes, and what is wrong with it (translated)."""
    return password_problems(visitor, await portal.form(request, visitor), address)


def password_problems(visitor: Visitor, form: FormData, address: str) -> tuple[str, list[str]]:
    password = form_text(form.get("password"), MAX_LENGTH * 4)
    confirm = form_text(form.get("password_confirm"), MAX_LENGTH * 4)
    return password, problem_messages(
        visitor.gettext, check_new_password(password, confirm, address)
    )


async def phrase_clash(portal: Portal, visitor: Visitor, address: str, password: str) -> list[str]:
    """The error for a new password set through a reset link that contains the account's
    security phrase or is part of it: the phrase travels in every notification, so it must
    not give the password away. The link proved control of the mailbox the phrase is mailed
    to, so the answer tells the visitor nothing new (a signed-in change checks the same only
    after the current password, see ``Accounts.change_password``)."""
    account = await portal.accounts.find(address)
    phrase = None if account is None else phrase_of(portal.keyring, account)
    if phrase is None or PhraseProblem.OVERLAPS_CREDENTIAL not in check_phrase(phrase, password):
        return []
    return phrase_in_password(visitor)


def phrase_in_password(visitor: Visitor) -> list[str]:
    return [
        visitor.gettext("The password must not contain your security phrase, nor be part of it.")
    ]


def form_phrase(value: object) -> str:
    # Cut well past the limit, so an oversized phrase is refused as too long, not truncated.
    return clean_phrase(form_text(value, PHRASE_MAX * 4))


def routes(portal: Portal) -> list[Route]:
    async def home(request: Request) -> Response:
        visitor = await portal.visitor(request)
        return portal.redirect(visitor, "/conversations")  # which asks to sign in if need be

    async def link(request: Request) -> Response:
        """A notification link: first visit creates the account, later ones lead to sign-in.
        The link alone never shows content."""
        visitor = await portal.visitor(request)
        token = request.path_params["token"]
        found = await portal.conversations.link(token)
        if found is None:
            raise HTTPException(404)
        target = f"/conversations/{found.conversation_id}"
        conversation = await portal.conversations.owned(found.conversation_id, found.recipient)
        if conversation is None:
            raise HTTPException(404)
        now = utcnow()
        if portal.conversations.expired(conversation, now):
            # Nothing left to read: no account is needed to be told so.
            return await portal.expired(visitor, conversation)
        if visitor.user is not None and visitor.user.address == found.recipient:
            return portal.redirect(visitor, target)
        if await portal.accounts.find(found.recipient) is not None:
            return portal.redirect(visitor, f"/login?next={target}")
        if request.method == "GET":
            return portal.render(
                visitor, "register.html", address=found.recipient, errors=[], phrase=""
            )
        form = await portal.form(request, visitor)
        password, errors = password_problems(visitor, form, found.recipient)
        phrase = form_phrase(form.get("security_phrase"))  # optional
        if phrase:
            errors += phrase_messages(visitor.gettext, check_phrase(phrase, password))
        if errors:
            return portal.render(
                visitor,
                "register.html",
                status=400,
                address=found.recipient,
                errors=errors,
                phrase=phrase,
            )
        cookie = await portal.accounts.register(
            found.recipient,
            password,
            visitor.client,
            now,
            phrase=phrase or None,
            keyring=portal.keyring,  # see security_phrase
        )
        if cookie is None:  # created meanwhile (another tab, another link)
            return portal.redirect(visitor, f"/login?next={target}")
        portal.signed_in(visitor, cookie)
        return portal.redirect(visitor, target)

    async def login(request: Request) -> Response:
        visitor = await portal.visitor(request)
        _ = visitor.gettext
        next_page = safe_next(request.query_params.get("next"))
        if request.method == "GET":
            ended = visitor.expired or request.query_params.get("ended") == "1"
            notice = _("Your session has ended. Please sign in again.") if ended else None
            return portal.render(
                visitor, "login.html", next=next_page, email="", error=None, notice=notice
            )
        form = await portal.form(request, visitor)
        next_page = safe_next(form.get("next"))
        email = normalise_address(form_text(form.get("email"), MAX_ADDRESS))
        password = form_text(form.get("password"), MAX_LENGTH * 4)
        result = await portal.accounts.sign_in(email, password, visitor.client, utcnow())
        if result.outcome is SignIn.OK and result.cookie is not None:
            portal.signed_in(visitor, result.cookie)
            return portal.redirect(visitor, next_page or "/conversations")
        if result.outcome is SignIn.LOCKED:
            error = _(
                "Too many unsuccessful attempts. For your protection, signing in is paused "
                "for 15 minutes. You can also reset your password."
            )
        else:
            error = _("The email address or the password is not correct.")
        return portal.render(
            visitor, "login.html", status=401, next=next_page, email=email, error=error, notice=None
        )

    async def logout(request: Request) -> Response:
        visitor = await portal.visitor(request)
        await portal.form(request, visitor)
        if visitor.user is not None:
            await portal.accounts.sign_out(visitor.user, visitor.client, utcnow())
        portal.signed_out(visitor)
        return portal.redirect(visitor, "/login?signed_out=1")

    async def forgot(request: Request) -> Response:
        visitor = await portal.visitor(request)
        _ = visitor.gettext
        if request.method == "GET":
            return portal.render(visitor, "forgot.html", sent=False)
        form = await portal.form(request, visitor)
        email = normalise_address(form_text(form.get("email"), MAX_ADDRESS))
        now = utcnow()

        async def mail_a_link() -> None:
            issued = await portal.accounts.request_reset(email, visitor.client, now)
            if issued is None:
                return
            account, token = issued
            link = f"{portal.settings.portal.base_url}/reset/{token}"
            await portal.outbox.send(
                account.address,
                _("Reset your password"),
                _(
                    "Someone, probably you, asked to reset the password of your secure "
                    "messages account. To choose a new password, open this link within "
                    "30 minutes:\n\n    {link}\n\nIf it was not you, ignore this email: your "
                    "password stays as it is. We will never ask for your password by email."
                ).format(link=link),
                now,
            )

        # The same answer whether or not the address has an account, and as fast: the link is
        # looked up and mailed after the page has gone out.
        response = portal.render(visitor, "forgot.html", sent=True)
        if email:
            response.background = BackgroundTask(mail_a_link)
        return response

    async def reset(request: Request) -> Response:
        visitor = await portal.visitor(request)
        _ = visitor.gettext
        token = request.path_params["token"]
        now = utcnow()
        account = await portal.accounts.reset_target(token, now)
        if account is None:
            return portal.render(
                visitor,
                "notice.html",
                status=404,
                title=_("This link is no longer valid"),
                text=_(
                    "Password reset links work once, for 30 minutes. You can ask for a new one."
                ),
                link=("/forgot", _("Reset your password")),
            )
        if request.method == "GET":
            return portal.render(visitor, "reset.html", address=account.address, errors=[])
        password, errors = await new_password(portal, request, visitor, account.address)
        errors = errors or await phrase_clash(portal, visitor, account.address, password)
        if errors:
            return portal.render(
                visitor, "reset.html", status=400, address=account.address, errors=errors
            )
        if await portal.accounts.reset(token, password, visitor.client, now) is None:
            raise HTTPException(404)
        await _confirm_change(portal, visitor, account.address)
        portal.signed_out(visitor)
        return portal.redirect(visitor, "/login?changed=1")

    async def change_password(request: Request) -> Response:
        visitor, user = await portal.member(request)
        if request.method == "GET":
            return portal.render(visitor, "password.html", errors=[], done=False)
        form = await portal.form(request, visitor)
        current = form_text(form.get("current_password"), MAX_LENGTH * 4)
        password = form_text(form.get("password"), MAX_LENGTH * 4)
        confirm = form_text(form.get("password_confirm"), MAX_LENGTH * 4)
        problems = check_new_password(password, confirm, user.address)
        errors = problem_messages(visitor.gettext, problems)
        if not errors:
            changed = await portal.accounts.change_password(
                user, current, password, visitor.client, utcnow(), keyring=portal.keyring
            )
            if changed is PasswordChange.WRONG:
                errors = [visitor.gettext("The current password is not correct.")]
            elif changed is PasswordChange.PHRASE:
                errors = phrase_in_password(visitor)
        if errors:
            return portal.render(visitor, "password.html", status=400, errors=errors, done=False)
        await _confirm_change(portal, visitor, user.address)
        return portal.render(visitor, "password.html", errors=[], done=True)

    async def security_phrase(request: Request) -> Response:
        visitor, user = await portal.member(request)
        if request.method == "GET":
            return portal.render(visitor, "phrase.html", errors=[], done=None, phrase="")
        form = await portal.form(request, visitor)
        current = form_text(form.get("current_password"), MAX_LENGTH * 4)
        phrase = form_phrase(form.get("security_phrase"))
        remove = form.get("remove") == "1"
        errors = [] if remove else phrase_messages(visitor.gettext, check_phrase(phrase, current))
        chosen = None if remove else phrase
        # The Portal keeps its keyring in the outbox (and in conversations), not on itself.
        keyring = portal.keyring
        if not errors and not await portal.accounts.change_phrase(
            user, current, chosen, keyring, visitor.client, utcnow()
        ):
            errors = [visitor.gettext("The current password is not correct.")]
        if errors:
            # The phrase goes back into the form (the person typed it), never the password.
            return portal.render(
                visitor, "phrase.html", status=400, errors=errors, done=None, phrase=phrase
            )
        done = "removed" if remove else "set"
        return portal.render(visitor, "phrase.html", errors=[], done=done, phrase="")

    async def language(request: Request) -> Response:
        return await portal.switch_language(request, await portal.visitor(request))

    return [
        Route("/", home, methods=["GET"]),
        Route("/c/{token}", link, methods=["GET", "POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/forgot", forgot, methods=["GET", "POST"]),
        Route("/reset/{token}", reset, methods=["GET", "POST"]),
        Route("/account/password", change_password, methods=["GET", "POST"]),
        Route("/account/phrase", security_phrase, methods=["GET", "POST"]),
        Route("/lang", language, methods=["POST"]),
    ]


async def _confirm_change(portal: Portal, visitor: Visitor, address: str) -> None:
    _ = visitor.gettext
    await portal.outbox.send(
        address,
        _("Your password was changed"),
        _(
            "The password of your secure messages account was just changed, and every other "
            "signed-in session was ended. If you did not do this, reset your password at once "
            "here: {link}"
        ).format(link=f"{portal.settings.portal.base_url}/forgot"),
        utcnow(),
    )
