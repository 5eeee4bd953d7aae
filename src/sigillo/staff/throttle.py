"""Console sign-in throttling: the portal's rules and counting, under keys of its own.

``staff:<email>`` counts failures for one staff address (5 lock it for 15 minutes, right
password and code or not); ``staff-client:<ip>`` counts one client's failures across
addresses (20 in 15 minutes lock that client). The keys never meet the portal's, so a
recipient's lockout never touches a member of staff with the same address, or back.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from sigillo.portal import throttle

PER_ADDRESS = throttle.Rule("staff:", limit=5, window=timedelta(days=1), lock=timedelta(minutes=15))
PER_CLIENT = throttle.Rule(
    "staff-client:", limit=20, window=timedelta(minutes=15), lock=timedelta(minutes=15)
)
STAFF = throttle.Throttle(PER_ADDRESS, PER_CLIENT)


def clear_address(session: Session, email: str) -> None:
    """Forget the failures counted for a staff address (its account was reset)."""
    STAFF.clear_address(session, email)
