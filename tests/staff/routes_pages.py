"""Every route of the dashboard, operator, auditor and agent pages, with the roles that may
use it, for the table-driven role test (each role x each route -> allowed or 403)."""

from __future__ import annotations

EVERYONE = {"admin", "operator", "auditor", "agent"}

ROUTES: dict[tuple[str, str], set[str]] = {
    ("GET", "/staff/dashboard"): EVERYONE,
    # operator
    ("GET", "/staff/queue"): {"operator"},
    ("GET", "/staff/jobs/{job:int}"): {"operator"},
    ("POST", "/staff/jobs/{job:int}/{action:str}"): {"operator"},
    ("GET", "/staff/domains"): {"operator"},
    # auditor
    ("GET", "/staff/audit"): {"auditor"},
    ("GET", "/staff/audit/export"): {"auditor"},
    ("GET", "/staff/audit/chain"): {"auditor"},
    # agent
    ("GET", "/staff/conversations"): {"agent"},
    ("GET", "/staff/conversations/{conversation:int}"): {"agent"},
    ("POST", "/staff/conversations/{conversation:int}/open"): {"agent"},
    (
        "POST",
        "/staff/conversations/{conversation:int}/messages/{message:str}/attachments/{index:int}",
    ): {"agent"},
    ("POST", "/staff/conversations/{conversation:int}/withdraw"): {"agent"},
    ("POST", "/staff/conversations/{conversation:int}/expiry"): {"agent"},
    # security operations: phishing reports
    ("GET", "/staff/reports"): {"admin", "operator"},
    ("GET", "/staff/reports/{report:int}"): {"admin", "operator"},
    ("POST", "/staff/reports/{report:int}/open"): {"admin", "operator"},
    ("POST", "/staff/reports/{report:int}/review"): {"admin", "operator"},
}

SAMPLES = {
    "job": "1",
    "action": "hold",
    "conversation": "1",
    "message": "0123456789abcdef0123456789abcdef",
    "index": "0",
    "report": "1",
}
