"""From findings to one verdict.

``genuine`` only for mail verifiably the organisation's own (sigillo's included);
``phishing`` when a finding says it imitates the organisation or asks for secrets;
``suspicious`` for everything else: mail that is not verifiably ours. A check that failed
is ``errored``, never a clean result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sigillo.phishing.findings import Finding

Verdict = Literal["genuine", "suspicious", "phishing", "errored"]


@dataclass(frozen=True)
class Report:
    verdict: Verdict
    findings: tuple[Finding, ...]

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "findings": [f.to_json() for f in self.findings]}


INTEGRITY_CODES = frozenset({"multiple-from", "from-missing", "dkim-partial-body"})
"""Findings that make an authentication worthless: the signed sender may not be the one shown,
or the signed text may not be all the text."""


def decide(findings: tuple[Finding, ...]) -> Verdict:
    """The verdict for a completed check.

    ``genuine`` needs positive proof: an ``org-authenticated`` finding (a whole-body DKIM
    signature of an organisation domain aligned with the one From address, or a trusted
    dmarc=pass for it) and no finding of the integrity class. Without it the message is at
    least ``suspicious``; any high-severity finding makes it ``phishing``. Content findings
    (links, requests for secrets) do not undo a proven origin: they stay listed.
    """
    codes = {f.code for f in findings}
    if "check-error" in codes:
        return "errored"
    if "org-authenticated" in codes and not codes & INTEGRITY_CODES:
        return "genuine"
    if any(f.severity == "high" for f in findings):
        return "phishing"
    return "suspicious"
