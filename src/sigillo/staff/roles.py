"""Staff roles as stored (``admin,agent``) and as typed (``--role admin --role agent`` or
``--role admin,agent``)."""

from __future__ import annotations

from collections.abc import Iterable

from sigillo.store.models import StaffRole

ORDER = (StaffRole.ADMIN, StaffRole.OPERATOR, StaffRole.AUDITOR, StaffRole.AGENT)


def parse_roles(values: str | Iterable[str]) -> frozenset[StaffRole]:
    """Roles from comma lists; ValueError names anything that is not a role."""
    items = [values] if isinstance(values, str) else list(values)
    names = [name.strip().lower() for item in items for name in item.split(",")]
    roles = set()
    for name in names:
        if not name:
            continue
        try:
            roles.add(StaffRole(name))
        except ValueError:
            known = ", ".join(role.value for role in ORDER)
            raise ValueError(f"unknown role {name!r} (one of {known})") from None
    return frozenset(roles)


def format_roles(roles: Iterable[StaffRole]) -> str:
    """The stored form: a comma list in a fixed order."""
    chosen = set(roles)
    return ",".join(role.value for role in ORDER if role in chosen)
