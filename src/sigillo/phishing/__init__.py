"""Is this email really from us? Checks a message against what the organisation tells its
recipients about recognising phishing, and gives a verdict with the findings behind it."""

from sigillo.phishing.checker import Checker, CheckPolicy
from sigillo.phishing.findings import Finding
from sigillo.phishing.verdict import Report, Verdict

__all__ = ["CheckPolicy", "Checker", "Finding", "Report", "Verdict"]
