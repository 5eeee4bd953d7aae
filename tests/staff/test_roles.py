"""Every console route x every role -> allowed or 403, from a table written by hand.

The routes are enumerated from the running application, so a route added without a row
here fails ``test_every_route_has_a_row``. The page authors' rows come from
``tests/staff/routes_pages.py`` (the dashboard, operator, auditor and agent pages)."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Route

from sigillo.store.models import StaffRole
from tests.staff import routes_pages
from tests.staff.harness import ConsoleHarness, StaffClient

PREFIX = "/staff"
EVERYONE = {"admin", "operator", "auditor", "agent"}
PUBLIC = {"public"}
"""Anyone, signed in or not (sign-in, enrolment, language): never a role check."""
ADMIN = {"admin"}

ROUTES: dict[tuple[str, str], set[str]] = {
    ("GET", "/staff/"): EVERYONE,
    ("GET", "/staff/login"): PUBLIC,
    ("POST", "/staff/login"): PUBLIC,
    ("POST", "/staff/logout"): PUBLIC,
    ("GET", "/staff/enrol/{token}"): PUBLIC,
    ("POST", "/staff/enrol/{token}"): PUBLIC,
    ("POST", "/staff/lang"): PUBLIC,
    ("GET", "/staff/admin/staff"): ADMIN,
    ("POST", "/staff/admin/staff"): ADMIN,
    ("GET", "/staff/admin/staff/{staff_id:int}"): ADMIN,
    ("POST", "/staff/admin/staff/{staff_id:int}/roles"): ADMIN,
    ("POST", "/staff/admin/staff/{staff_id:int}/disable"): ADMIN,
    ("POST", "/staff/admin/staff/{staff_id:int}/reset"): ADMIN,
    ("GET", "/staff/admin/policies"): ADMIN,
    ("POST", "/staff/admin/policies"): ADMIN,
}
SAMPLES: dict[str, str] = {
    "token": "no-such-enrolment-token",
    "staff_id": "999999",  # nobody: an allowed POST finds nothing to change
}

# The dashboard's, operator's, auditor's and agent's rows live beside their pages' tests.
assert not set(routes_pages.ROUTES) & set(ROUTES), "a route in both tables"
ROUTES.update(routes_pages.ROUTES)
SAMPLES.update(routes_pages.SAMPLES)

_PARAM = re.compile(r"\{([a-z_]+)(?::[a-z]+)?\}")


def fill(path: str, samples: dict[str, str]) -> str:
    return _PARAM.sub(lambda m: samples[m[1]], path)


def console_routes(console: ConsoleHarness) -> list[tuple[str, str]]:
    """(method, path as declared) of every route the running console serves."""
    found = []
    for route in console.app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, PREFIX + route.path))
    return found


async def test_every_route_has_a_row(console: ConsoleHarness) -> None:
    served = set(console_routes(console))
    assert served - set(ROUTES) == set(), "routes without a row in the role table"
    assert set(ROUTES) - served == set(), "rows for routes the console does not serve"


async def request(client: StaffClient, method: str, path: str) -> tuple[int, str]:
    if method == "GET":
        response = await client.get(path)
    else:
        response = await client.post(path)  # a valid form token, no other field
    return response.status_code, response.headers.get("location", "")


def to_sign_in(status: int, location: str) -> bool:
    return status == 303 and location.startswith("/staff/login?next=")


@pytest.mark.parametrize("role", [*sorted(EVERYONE), "anonymous"])
async def test_each_role_on_each_route(console: ConsoleHarness, role: str) -> None:
    if role == "anonymous":
        client = console.client()
    else:
        member = await console.member(f"{role}@org.example", StaffRole(role))
        client = await console.signed_in(member)
    wrong = []
    for method, template in console_routes(console):
        allowed = ROUTES[(method, template)]
        status, location = await request(client, method, fill(template, SAMPLES))
        if allowed == PUBLIC:
            ok = status != 403 and status < 500 and not to_sign_in(status, location)
        elif role == "anonymous":
            ok = to_sign_in(status, location)
        elif role in allowed:
            ok = status != 403 and status < 500 and not to_sign_in(status, location)
        else:
            ok = status == 403
        if not ok:
            wrong.append((method, template, status, location))
        if role != "anonymous" and method == "POST" and template == "/staff/logout":
            client = await console.signed_in(member)  # signed out by that row: back in
    assert wrong == [], f"{role}: {wrong}"
