"""Requests for secrets: a verb asking to give, type or confirm, followed within a few words by
a secret (password, PIN, card number, CVV, expiry, one-time code), in English or Italian.

A request said in the negative ("we will never ask you to send your password", "non
comunicare a nessuno il PIN") is advice, not a request: a negation shortly before the verb, in
the same clause, cancels the match. sigillo's own notifications say exactly that.
"""

from __future__ import annotations

import re


def _phrases(*groups: str) -> frozenset[tuple[str, ...]]:
    """Comma-separated phrases as tuples of lower-case words."""
    return frozenset(tuple(p.split()) for group in groups for p in group.split(",") if p.strip())


_VERBS = _phrases(
    # English
    "enter, re-enter, reenter, type, input, key in, fill in, confirm, verify, validate, update,"
    "send, send us, send me, provide, submit, give, share, disclose, tell us, complete, insert,"
    "write, forward, reply with, respond with, reply to this email with,"
    "reply to this e-mail with, reply to this message with",
    # Italian
    "inserisci, inserire, inserite, inseriscici, reinserisci, digita, digitare, digitate,"
    "immetti, immettere, conferma, confermare, confermate, comunica, comunicare, comunicate,"
    "comunicaci, invia, inviare, inviate, inviaci, inviateci, manda, mandare, mandaci,"
    "fornisci, fornire, fornite, forniscici, aggiorna, aggiornare, aggiornate, verifica,"
    "verificare, verificate, indica, indicare, indicaci, trasmetti, trasmettere, compila,"
    "compilare, scrivi, scrivici, scrivere, convalida, convalidare, rispondi con,"
    "rispondere con, rispondi indicando,"
    # the forms a letter uses ("La preghiamo: inserisca...", "se non confermi...")
    "inserisca, inserisci, confermi, comunichi, invii, fornisca, aggiorni, verifichi, indichi,"
    "digiti, immetta, trasmetta, compili, scriva",
)
"""Verbs that ask to hand over or type something, as sequences of lower-case words."""
_VERB_STARTS = frozenset(v[0] for v in _VERBS)
_LONGEST_VERB = max(len(v) for v in _VERBS)
_MAX_FILLER = 4
"""Words allowed between verb and secret ("enter the full card number")."""
_SECRETS_EN = (
    r"pass(?:word|code|phrase)s?|pins?(?: code| number)?|(?:credit |debit |bank )?card"
    r"(?: number| details| data| information| info|'s number)|cvv2?|cvc2?|cv2|security code"
    r"|expiry date|expiration date|one[- ]time (?:code|password|passcode)|otp(?: code)?"
    r"|verification code|sms code|authentication code|2fa code|access code"
    r"|login details|log-?in credentials|credentials|security answers?"
)
_SECRETS_IT = (
    r"password|pin|codice pin|codici pin|codice (?:otp|segreto|di sicurezza|di verifica"
    r"|dispositivo|di accesso|ricevuto(?: via| per)? sms|sms|cvv|di conferma)|otp|cvv|cvc"
    r"|dati (?:della|delle) (?:tua |sua |vostra )?cart[ae]|numero (?:della|di) (?:tua |sua )?carta"
    r"|numeri della carta|data di scadenza|scadenza della carta|credenziali"
    r"|dati di accesso|chiave (?:di accesso|segreta)"
)
# The lookahead on the secrets' first letters lets most positions fail at once (twice as fast).
_SECRET = re.compile(
    rf"(?<![^\W_])(?=[pcdbseova2ln])(?:{_SECRETS_EN}|{_SECRETS_IT})(?![^\W_])", re.IGNORECASE
)
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.;:!?]")
_REACH = 160
"""Characters before a secret searched for its verb (the verb and four words fit easily)."""

_NEGATION = re.compile(
    r"(?<![^\W_])(?:never|not|no one|nobody|n't|non|mai|nessuno|neanche|nemmeno|neither|nor"
    r"|don'?t|doesn'?t|won'?t|shouldn'?t|cannot)(?![^\W_])",
    re.IGNORECASE,
)
_CONDITION = re.compile(
    r"(?<![^\W_])(?:if|unless|otherwise|se|qualora|altrimenti|in case|in caso)(?![^\W_])",
    re.IGNORECASE,
)
"""A negation in a condition ("if you do not confirm your PIN...") still comes with a request."""
_CLAUSE_END = re.compile(r"[.;:!?,\n]")
_NEGATION_WINDOW = 6
"""Words before the verb in which a negation still governs it."""


def requests_for_secrets(text: str, limit: int = 3) -> list[str]:
    """The phrases in ``text`` that ask for a secret (at most ``limit``), as written."""
    text = _paragraphs(text)
    found: list[str] = []
    starts: set[int] = set()
    # Secrets are rare in ordinary text: find them first, then look for a verb just before.
    for secret in _SECRET.finditer(text):
        start = _request_start(text, secret.start())
        if start is None:
            continue
        if start in starts or _negated(text, start):
            continue  # one request naming several secrets is reported once
        starts.add(start)
        phrase = " ".join(text[start : secret.end()].split())
        if phrase.lower() not in (p.lower() for p in found):
            found.append(phrase)
            if len(found) >= limit:
                break
    return found


def _request_start(text: str, secret: int) -> int | None:
    """Where the verb asking for the secret at ``secret`` starts, if one does."""
    base = max(0, secret - _REACH)
    words = [(m.group(0), base + m.start()) for m in _WORD.finditer(text, base, secret)]
    if base and words:
        words = words[1:]  # perhaps cut in the middle
    words = words[-(_MAX_FILLER + 1 + _LONGEST_VERB) :]
    # Nearest verb first; the words between it and the secret must stay in one sentence.
    lowered = [w.lower() for w, _ in words]
    for first in range(len(words) - 1, -1, -1):
        if lowered[first] not in _VERB_STARTS:
            continue
        for length in range(1, min(_LONGEST_VERB, len(words) - first) + 1):
            if tuple(lowered[first : first + length]) not in _VERBS:
                continue
            filler = [w for w, _ in words[first + length :]]
            if filler and filler[-1].endswith(("'", "’")):
                filler = filler[:-1]  # an elided article: "l'OTP"
            if (
                len(filler) <= _MAX_FILLER
                and not any(_SENTENCE_END.search(w) for w in filler)
                and "\n" not in text[words[first][1] : secret]
            ):
                return words[first][1]
    return None


def _paragraphs(text: str) -> str:
    # A blank line ends a clause; a single line break is wrapping inside a sentence.
    return re.sub(r"[ \t]*\n(?:[ \t]*\n)+", "\n", re.sub(r"(?<!\n)[ \t]*\n(?![ \t]*\n)", " ", text))


def _negated(text: str, start: int) -> bool:
    before = text[max(0, start - 200) : start]
    clause = _CLAUSE_END.split(before)[-1]
    window = " ".join(clause.split()[-_NEGATION_WINDOW:])
    return _NEGATION.search(window) is not None and _CONDITION.search(window) is None
