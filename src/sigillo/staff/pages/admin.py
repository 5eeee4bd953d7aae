"""Administration pages (role admin): staff accounts, domain policies, retention.

Every change goes through the same functions as ``sigillo staff ...`` and
``sigillo.policies.set_policy``, audited with the admin as actor in the change's own
transaction. No page here shows message content or anything about a conversation.
"""

from __future__ import annotations

from typing import Any, cast

from babel.dates import format_timedelta
from sqlalchemy.orm import Session
from starlette.responses import Response
from starlette.routing import Route

from sigillo.config import TLSLevel
from sigillo.policies import TLS_LEVELS, DomainPolicies, normalise_domain, set_policy
from sigillo.staff import accounts
from sigillo.staff.accounts import Refusal, StaffError
from sigillo.staff.pages.base import N_, Console, NavItem, Page
from sigillo.staff.roles import ORDER, parse_roles
from sigillo.store.models import StaffAccount, StaffRole

ADMIN = frozenset({StaffRole.ADMIN})
STAFF = "/staff/admin/staff"
POLICIES = "/staff/admin/policies"

NAV = (
    NavItem(STAFF, N_("Staff accounts"), ADMIN),
    NavItem(POLICIES, N_("Domain policies"), ADMIN),
)

_TLS_CHOICES = ("none", *TLS_LEVELS)
"""``none``: no console override (the configured default, or the file's entry, applies)."""


def routes(console: Console) -> list[Route]:
    async def staff_page(page: Page, *, status: int = 200, **context: Any) -> Response:
        members = await accounts.list_staff(console.store)
        context.setdefault("errors", [])
        context.setdefault("email", "")
        context.setdefault("chosen", [])
        return page.render(
            "admin_staff.html", status=status, members=members, roles=ORDER, **context
        )

    async def staff_list(page: Page) -> Response:
        return await staff_page(page)

    def refused(page: Page, exc: StaffError) -> str:
        _ = page.gettext
        if isinstance(exc, Refusal):
            return _("This is the last enabled administrator: make another member admin first.")
        return str(exc)

    async def staff_add(page: Page) -> Response:
        _ = page.gettext
        email = page.text("email", 320).strip()
        chosen = [r for r in page.form.getlist("roles") if isinstance(r, str)]
        try:
            roles = parse_roles(chosen)
        except ValueError:
            roles = frozenset()
        if not roles:
            return await staff_page(
                page,
                status=400,
                errors=[_("Choose at least one role.")],
                email=email,
                chosen=chosen,
            )
        valid = console.settings.staff.enrolment_valid

        def write(session: Session) -> str:
            return accounts.add(
                session,
                console.keyring,
                email,
                roles,
                actor=page.member.email,
                at=page.now,
                valid=valid,
                client=page.member.client,
            )

        try:
            token = await console.store.write(write)
        except StaffError as exc:
            return await staff_page(
                page, status=400, errors=[refused(page, exc)], email=email, chosen=chosen
            )
        return _link_page(page, console, accounts.valid_email(email), token, added=True)

    async def member_of(page: Page) -> StaffAccount | None:
        async with console.store.session() as session:
            return await session.get(StaffAccount, page.request.path_params["staff_id"])

    async def member_page(
        page: Page, account: StaffAccount, *, status: int = 200, errors: list[str] | None = None
    ) -> Response:
        return page.render(
            "admin_member.html",
            status=status,
            account=account,
            held=parse_roles(account.roles),
            roles=ORDER,
            errors=errors or [],
            done=page.request.query_params.get("done"),
        )

    async def member(page: Page) -> Response:
        account = await member_of(page)
        if account is None:
            return page.error(404)
        return await member_page(page, account)

    async def change(page: Page, action: str) -> Response:
        _ = page.gettext
        account = await member_of(page)
        if account is None:
            return page.error(404)
        email = account.email
        if action == "roles":
            chosen = [r for r in page.form.getlist("roles") if isinstance(r, str)]
            try:
                roles = parse_roles(chosen)
            except ValueError:
                roles = frozenset()
            if not roles:
                return await member_page(
                    page, account, status=400, errors=[_("Choose at least one role.")]
                )

            def write(session: Session) -> str | None:
                accounts.set_roles(
                    session,
                    email,
                    roles,
                    actor=page.member.email,
                    at=page.now,
                    client=page.member.client,
                )
                return None

        elif action == "disable":

            def write(session: Session) -> str | None:
                accounts.disable(
                    session,
                    email,
                    actor=page.member.email,
                    at=page.now,
                    client=page.member.client,
                )
                return None

        else:
            valid = console.settings.staff.enrolment_valid

            def write(session: Session) -> str | None:
                return accounts.reset(
                    session,
                    console.keyring,
                    email,
                    actor=page.member.email,
                    at=page.now,
                    valid=valid,
                    client=page.member.client,
                )

        try:
            token = await console.store.write(write)
        except StaffError as exc:
            return await member_page(page, account, status=400, errors=[refused(page, exc)])
        if token is not None:
            return _link_page(page, console, email, token, added=False)
        if action == "disable" and page.member.id == account.id:
            return page.redirect("/staff/login")  # own sessions just ended
        return page.redirect(f"{STAFF}/{account.id}?done={action}")

    async def set_member_roles(page: Page) -> Response:
        return await change(page, "roles")

    async def disable_member(page: Page) -> Response:
        return await change(page, "disable")

    async def reset_member(page: Page) -> Response:
        return await change(page, "reset")

    async def policies_page(
        page: Page, *, status: int = 200, errors: list[str] | None = None, **context: Any
    ) -> Response:
        settings = console.settings
        current = await DomainPolicies.load(console.store)
        edit = context.pop("edit", None)
        if edit is None:
            wanted = page.request.query_params.get("domain", "")
            row = current.rules.get(wanted)
            edit = {
                "domain": wanted if row else "",
                "tls": (row.tls if row and row.tls else "none"),
                "retention_days": str(row.retention_days) if row and row.retention_days else "",
            }
        return page.render(
            "admin_policies.html",
            status=status,
            rules=sorted(current.rules.values(), key=lambda r: r.domain.lstrip(".")),
            file_rules=sorted(settings.delivery.domains.items()),
            default_tls=settings.delivery.default_tls,
            message_ttl_days=settings.portal.message_ttl_days,
            delivered_content=format_timedelta(
                settings.retention.delivered_content,
                threshold=1,
                locale=page.member.language,
            ),
            tls_choices=_TLS_CHOICES,
            edit=edit,
            saved=page.request.query_params.get("saved") == "1",
            errors=errors or [],
            **context,
        )

    async def policies(page: Page) -> Response:
        return await policies_page(page)

    async def set_domain_policy(page: Page) -> Response:
        _ = page.gettext
        raw_domain = page.text("domain", 260).strip()
        tls_choice = page.text("tls", 16)
        days_text = page.text("retention_days", 8).strip()
        edit = {"domain": raw_domain, "tls": tls_choice, "retention_days": days_text}
        errors = []
        try:
            domain = normalise_domain(raw_domain)
        except ValueError:
            domain = ""
            errors.append(
                _(
                    "Enter a domain name such as example.com, or .example.com for all its "
                    "subdomains."
                )
            )
        if tls_choice not in _TLS_CHOICES:
            errors.append(_("Choose a TLS level."))
        days: int | None = None
        if days_text:
            if not days_text.isdigit() or not 1 <= int(days_text) <= 3650:
                errors.append(_("Retention is a number of days between 1 and 3650, or empty."))
            else:
                days = int(days_text)
        if errors:
            return await policies_page(page, status=400, errors=errors, edit=edit)
        tls = None if tls_choice == "none" else cast(TLSLevel, tls_choice)

        def write(session: Session) -> None:
            set_policy(
                session,
                domain,
                tls=tls,
                retention_days=days,
                actor=page.member.email,
                at=page.now,
                client=page.member.client,
            )

        await console.store.write(write)
        return page.redirect(f"{POLICIES}?saved=1")

    return [
        console.page(STAFF, staff_list, roles=ADMIN),
        console.page(STAFF, staff_add, roles=ADMIN, methods=("POST",)),
        console.page(f"{STAFF}/{{staff_id:int}}", member, roles=ADMIN),
        console.page(
            f"{STAFF}/{{staff_id:int}}/roles", set_member_roles, roles=ADMIN, methods=("POST",)
        ),
        console.page(
            f"{STAFF}/{{staff_id:int}}/disable", disable_member, roles=ADMIN, methods=("POST",)
        ),
        console.page(
            f"{STAFF}/{{staff_id:int}}/reset", reset_member, roles=ADMIN, methods=("POST",)
        ),
        console.page(POLICIES, policies, roles=ADMIN),
        console.page(POLICIES, set_domain_policy, roles=ADMIN, methods=("POST",)),
    ]


def _link_page(page: Page, console: Console, email: str, token: str, *, added: bool) -> Response:
    """The enrolment link, shown this once: only its hash is kept."""
    link = accounts.enrolment_link(console.settings.portal.base_url, token)
    return page.render(
        "admin_link.html",
        email=email,
        link=link,
        added=added,
        valid=format_timedelta(
            console.settings.staff.enrolment_valid, threshold=1, locale=page.member.language
        ),
    )
