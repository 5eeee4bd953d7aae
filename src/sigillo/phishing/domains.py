"""Domains: which are the organisation's, and which imitate them.

A look-alike is judged on the registrable label ("bancamica" in "mail.bancamica.it"), after
reducing it to a skeleton: punycode decoded, confusable characters mapped to the Latin ones they
imitate, accents dropped, and the digit/letter swaps a reader's eye forgives (0/o, 1/l, rn/m,
vv/w, 5/s, 3/e). The rules are general: same name under another suffix, the same skeleton, the
name with words added, the name used as a subdomain of another domain, or one or two edits away.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import idna
import tldextract
from confusable_homoglyphs import confusables

# The snapshot of the public suffix list bundled with tldextract; it never fetches, and with no
# cache directory it never writes.
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _skeleton_table() -> dict[int, str]:
    table: dict[int, str] = {}
    data: dict[str, list[dict[str, str]]] = confusables.confusables_data
    for char, glyphs in data.items():
        if len(char) != 1 or char.isascii():
            continue
        for glyph in glyphs:
            target = glyph["c"].lower()
            if len(target) == 1 and target.isascii() and (target.isalnum() or target == "-"):
                table[ord(char)] = target
                break
    return table


_SKELETON = _skeleton_table()
_SWAPS = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("5", "s"), ("3", "e"), ("4", "a"))


@lru_cache(maxsize=4096)
def skeleton(text: str) -> str:
    """What ``text`` looks like to a reader, reduced to plain lower-case Latin."""
    text = text.lower().translate(_SKELETON)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = text.lower()
    for seen, meant in _SWAPS:
        text = text.replace(seen, meant)
    return text


@dataclass(frozen=True)
class Domain:
    subdomain: str
    label: str
    suffix: str

    @property
    def registrable(self) -> str:
        return f"{self.label}.{self.suffix}" if self.suffix else self.label


def unicode_host(host: str) -> str:
    """``host`` lower-cased, trailing dot dropped, punycode labels decoded where valid."""
    labels = host.strip().rstrip(".").lower().split(".")
    return ".".join(_decode_label(label) for label in labels)


def _decode_label(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return idna.decode(label)
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        # Lax decoding: a label IDNA 2008 rejects can still render in a mail client.
        return label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return label


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def split(host: str) -> Domain | None:
    """The registrable domain of ``host`` (already lower-case); None for IPs and bare suffixes."""
    host = host.rstrip(".")
    if not host or is_ip(host):
        return None
    parts = _EXTRACT(host)
    if parts.suffix:
        return Domain(parts.subdomain, parts.domain, parts.suffix) if parts.domain else None
    # Not under a public suffix (as "org.example"): the last label stands in for one.
    labels = host.split(".")
    if len(labels) == 1:
        return Domain("", labels[0], "")
    return Domain(".".join(labels[:-2]), labels[-2], labels[-1])


@lru_cache(maxsize=4096)
def public_suffix(host: str) -> str:
    """The public suffix ``host`` ends in ("" when none is listed)."""
    return "" if is_ip(host) else _EXTRACT(host).suffix


def registrable(host: str) -> str:
    domain = split(host)
    return domain.registrable if domain else host


def under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def org_domain_of(host: str, org_domains: Iterable[str]) -> str | None:
    """The organisation domain ``host`` is, or is under; None when it is not the organisation's."""
    host = host.rstrip(".").lower()
    for domain in org_domains:
        if under(host, domain):
            return domain
    return None


def osa_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance, or ``limit + 1`` once above it."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return prev[-1]


_WORDS = re.compile(r"[a-z0-9]+")
MIN_NAME = 4
"""Shorter names are not searched for inside others or by edit distance: one edit of a
three-letter name gives a large share of all three-letter names."""


@dataclass(frozen=True)
class Reference:
    """What is imitated: an organisation domain (or the portal's), reduced for comparison."""

    domain: str
    label: str
    suffix: str
    skeleton: str

    @classmethod
    def of(cls, domain: str) -> Reference | None:
        parts = split(domain)
        if parts is None:
            return None
        return cls(parts.registrable, parts.label, parts.suffix, skeleton(parts.label))


def lookalike(
    host: str, references: tuple[Reference, ...], names: tuple[str, ...] = ()
) -> str | None:
    """Why ``host`` imitates one of ``references`` (or a compact organisation name), or None.

    ``host`` must not be the organisation's own (callers check that first).
    """
    domain = split(unicode_host(host))
    if domain is None:
        return None
    label = skeleton(domain.label)
    words = _WORDS.findall(label)
    compact = "".join(words)
    for ref in references:
        if domain.registrable == ref.domain:
            return None
    for ref in references:
        if domain.label == ref.label:
            return f"the name of {ref.domain} under another suffix"
        if label == ref.skeleton:
            return f"looks like {ref.domain} (look-alike characters)"
        if len(ref.skeleton) >= MIN_NAME:
            if ref.skeleton in words or ref.skeleton in compact:
                return f"{ref.domain}'s name with words added"
            for sub in domain.subdomain.split("."):
                sub_words = _WORDS.findall(skeleton(sub))
                if ref.skeleton in sub_words or ref.skeleton in "".join(sub_words):
                    return f"uses {ref.domain}'s name as a subdomain of another domain"
            # Hyphens aside, one edit (a transposition counts as one): two edits already reach
            # other real names (bancaetica from bancamica), and the usual tricks (rn for m, 0 for
            # o) are skeleton matches above. An internationalised label near the name gets two:
            # accented look-alikes of an Italian name are rarely anyone's own brand.
            limit = 2 if domain.label.startswith("xn--") or not domain.label.isascii() else 1
            distance = osa_distance(compact, "".join(_WORDS.findall(ref.skeleton)), limit)
            if distance <= limit:
                return f"{distance} character(s) away from {ref.domain}"
    for name in names:
        if len(name) >= MIN_NAME + 1 and name in compact:
            return "contains the organisation's name"
    return None


def compact_name(name: str) -> str:
    """An organisation name as compared: skeleton, letters and digits only."""
    return "".join(_WORDS.findall(skeleton(name)))


def claims_org(
    display: str,
    org_domains: tuple[str, ...],
    references: tuple[Reference, ...],
    names: tuple[str, ...],
) -> str | None:
    """What in a display name names the organisation (its name, a domain, an address), or None."""
    seen = skeleton(display)
    words = _WORDS.findall(seen)
    compact = "".join(words)
    for domain in org_domains:
        if skeleton(domain) in seen:
            return domain
    for ref in references:
        if ref.skeleton in words:
            return ref.label
    for name in names:
        if name in words or (len(name) > MIN_NAME and name in compact):
            return name
    return None
