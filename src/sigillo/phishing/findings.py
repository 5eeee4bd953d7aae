"""What a check can find: a stable code, a severity, one line in English and Italian.

Codes are a contract (``sigillo check --json``, the console's report list, scripts): a code
may be added, never renamed or given another meaning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Severity = Literal["info", "low", "medium", "high"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high")


@dataclass(frozen=True)
class Explanation:
    severity: Severity
    en: str
    it: str


CATALOGUE: Mapping[str, Explanation] = {
    "check-error": Explanation(
        "high",
        "The message could not be checked; treat it as unverified.",
        "Non è stato possibile controllare il messaggio; consideralo non verificato.",
    ),
    "mime-too-complex": Explanation(
        "medium",
        "The message is nested or split into parts beyond what is checked; the rest was not read.",
        "Il messaggio ha più livelli o parti di quanti ne vengano controllati; il resto non è "
        "stato letto.",
    ),
    # Sender
    "from-missing": Explanation(
        "medium",
        "The message has no usable sender address.",
        "Il messaggio non ha un indirizzo del mittente utilizzabile.",
    ),
    "multiple-from": Explanation(
        "high",
        "The message names more than one sender: a way to show one and sign another.",
        "Il messaggio indica più di un mittente: un modo per mostrarne uno e firmarne un altro.",
    ),
    "from-org-unauthenticated": Explanation(
        "high",
        "The sender address is the organisation's, but the message is not authenticated as "
        "coming from it.",
        "L'indirizzo del mittente è dell'organizzazione, ma il messaggio non risulta "
        "autenticato come proveniente da essa.",
    ),
    "from-lookalike": Explanation(
        "high",
        "The sender's domain imitates the organisation's domain.",
        "Il dominio del mittente imita quello dell'organizzazione.",
    ),
    "display-name-claims-org": Explanation(
        "high",
        "The sender's name claims to be the organisation, but the address is elsewhere.",
        "Il nome del mittente si presenta come l'organizzazione, ma l'indirizzo è altrove.",
    ),
    "not-from-org": Explanation(
        "info",
        "The message comes from outside the organisation; we cannot vouch for it.",
        "Il messaggio proviene da fuori dell'organizzazione; non possiamo garantirlo.",
    ),
    "reply-to-elsewhere": Explanation(
        "medium",
        "Replies would go to a different domain than the sender's.",
        "Le risposte andrebbero a un dominio diverso da quello del mittente.",
    ),
    "reply-to-leaves-org": Explanation(
        "high",
        "The message claims to come from the organisation, but replies would go elsewhere.",
        "Il messaggio dice di venire dall'organizzazione, ma le risposte andrebbero altrove.",
    ),
    "return-path-elsewhere": Explanation(
        "low",
        "The bounce address is at a different domain than the sender's.",
        "L'indirizzo per i messaggi di mancato recapito è in un dominio diverso da quello "
        "del mittente.",
    ),
    # Authentication
    "org-authenticated": Explanation(
        "info",
        "The message is authenticated as the organisation's own.",
        "Il messaggio risulta autenticato come proveniente dall'organizzazione.",
    ),
    "dkim-missing": Explanation(
        "medium",
        "The message carries no DKIM signature: nothing proves who sent it.",
        "Il messaggio non ha una firma DKIM: nulla dimostra chi l'ha inviato.",
    ),
    "dkim-fail": Explanation(
        "medium",
        "A DKIM signature does not verify: the message was changed after signing, or forged.",
        "Una firma DKIM non è valida: il messaggio è stato modificato dopo la firma, o è "
        "contraffatto.",
    ),
    "dkim-unverifiable": Explanation(
        "info",
        "A DKIM signature could not be verified: its key is not known here.",
        "Non è stato possibile verificare una firma DKIM: la sua chiave qui non è nota.",
    ),
    "dkim-other-domain": Explanation(
        "low",
        "A valid DKIM signature belongs to a domain other than the sender's.",
        "Una firma DKIM valida appartiene a un dominio diverso da quello del mittente.",
    ),
    "dkim-partial-body": Explanation(
        "high",
        "A DKIM signature covers only the start of the text: what follows could have been added "
        "by anyone.",
        "Una firma DKIM copre solo l'inizio del testo: il resto potrebbe essere stato aggiunto "
        "da chiunque.",
    ),
    "spf-fail": Explanation(
        "medium",
        "Our mail server found that the sending server is not allowed to send for the sender's "
        "domain (SPF).",
        "Il nostro server di posta ha rilevato che il server di invio non è autorizzato a "
        "inviare per il dominio del mittente (SPF).",
    ),
    "dmarc-fail": Explanation(
        "high",
        "Our mail server found that the sender's domain disowns this message (DMARC).",
        "Il nostro server di posta ha rilevato che il dominio del mittente non riconosce "
        "questo messaggio (DMARC).",
    ),
    "auth-results-untrusted": Explanation(
        "info",
        "An authentication result not added by our own mail servers was ignored.",
        "È stato ignorato un risultato di autenticazione non aggiunto dai nostri server di posta.",
    ),
    # Links and forms
    "link-text-mismatch": Explanation(
        "high",
        "A link shows one address but leads to another.",
        "Un link mostra un indirizzo ma porta a un altro.",
    ),
    "link-http": Explanation(
        "medium",
        "A link does not use HTTPS: genuine sites do.",
        "Un link non usa HTTPS, come invece fanno i siti autentici.",
    ),
    "link-ip-host": Explanation(
        "high",
        "A link leads to a bare numeric address instead of a named site.",
        "Un link porta a un indirizzo numerico invece che a un sito con un nome.",
    ),
    "link-shortener": Explanation(
        "medium",
        "A link goes through a URL shortener, which hides where it leads.",
        "Un link passa da un servizio di abbreviazione, che nasconde dove porta.",
    ),
    "link-userinfo": Explanation(
        "high",
        "A link hides its real destination behind a name followed by '@'.",
        "Un link nasconde la sua vera destinazione dietro un nome seguito da '@'.",
    ),
    "link-lookalike": Explanation(
        "high",
        "A link leads to a site whose name imitates the organisation's.",
        "Un link porta a un sito il cui nome imita quello dell'organizzazione.",
    ),
    "link-unsafe-scheme": Explanation(
        "high",
        "A link runs code or opens embedded content instead of going to a site.",
        "Un link esegue codice o apre contenuto incorporato invece di portare a un sito.",
    ),
    "credential-link-elsewhere": Explanation(
        "high",
        "A link invites you to sign in or verify your account on a site that is not our portal.",
        "Un link ti invita ad accedere o verificare il tuo account su un sito che non è il "
        "nostro portale.",
    ),
    "form-in-message": Explanation(
        "medium",
        "The message contains a form to fill in.",
        "Il messaggio contiene un modulo da compilare.",
    ),
    "form-password": Explanation(
        "high",
        "The message contains a form that asks for a password.",
        "Il messaggio contiene un modulo che chiede una password.",
    ),
    "form-action-elsewhere": Explanation(
        "high",
        "The message contains a form that sends what you type to a site that is not our portal.",
        "Il messaggio contiene un modulo che invia ciò che scrivi a un sito che non è il "
        "nostro portale.",
    ),
    # Content and recipient
    "asks-for-secrets": Explanation(
        "high",
        "The message asks for a password, PIN, card details or a code: we never do that by email.",
        "Il messaggio chiede una password, un PIN, i dati della carta o un codice: non lo "
        "facciamo mai per email.",
    ),
    "not-addressed-to-you": Explanation(
        "medium",
        "The message was not addressed to your address.",
        "Il messaggio non era indirizzato al tuo indirizzo.",
    ),
}


@dataclass(frozen=True)
class Finding:
    code: str
    evidence: str
    """What in the message showed it: an address, a host, a link, a phrase (cut to a line)."""

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"unknown finding code {self.code!r}")

    @property
    def severity(self) -> Severity:
        return CATALOGUE[self.code].severity

    def explanation(self, lang: str) -> str:
        entry = CATALOGUE[self.code]
        return entry.it if lang == "it" else entry.en

    def to_json(self) -> dict[str, object]:
        entry = CATALOGUE[self.code]
        return {
            "code": self.code,
            "severity": entry.severity,
            "explanation": {"en": entry.en, "it": entry.it},
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Explained:
    """A finding as a page lists it: its explanation in the page's language."""

    code: str
    severity: Severity
    explanation: str
    evidence: str


def explained(findings: Iterable[Finding], lang: str) -> list[Explained]:
    """``findings`` in the order given (a report's: most severe first), explained in ``lang``."""
    return [Explained(f.code, f.severity, f.explanation(lang), f.evidence) for f in findings]


def by_severity(findings: list[Finding]) -> tuple[Finding, ...]:
    """Most severe first; equal ones keep the order they were found in (sort is stable)."""
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return tuple(sorted(findings, key=lambda f: rank[f.severity]))


def cut(text: str, limit: int = 200) -> str:
    """Evidence fit for one line: whitespace collapsed, control characters gone, at most
    ``limit`` characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
