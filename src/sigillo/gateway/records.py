"""Delivery records as plain data: what ``sigillo message``/``queue`` print and what a data
subject's export holds of each delivery attempt."""

from __future__ import annotations

from typing import Any

from sigillo.store.models import Attempt


def attempt_record(attempt: Attempt) -> dict[str, Any]:
    """One attempt's evidence, whole: operators and data subjects see the same record."""
    return {
        "at": attempt.at.isoformat(),
        "outcome": attempt.outcome,
        "reason": attempt.reason,
        "mx_host": attempt.mx_host,
        "mx_ip": attempt.mx_ip,
        "tls_version": attempt.tls_version,
        "tls_cipher": attempt.tls_cipher,
        "cert_verified": attempt.cert_verified,
        "verification": attempt.verification,
        "tls_policy": attempt.tls_policy,
        "smtp_code": attempt.smtp_code,
        "smtp_reply": attempt.smtp_reply,
        "details": attempt.details,
    }
