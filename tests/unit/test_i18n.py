"""The portal's languages: every string extracted from the sources has its Italian, with the
same placeholders; the committed template follows the sources; the browser's language is
negotiated; dates and sizes are written as each language writes them.

The extraction uses babel.cfg, the same mapping scripts/catalog.sh gives pybabel.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from string import Formatter

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from sigillo.portal import i18n
from sigillo.portal.i18n import Formats, load_translations, negotiate

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "src" / "sigillo" / "portal" / "locale"
TEMPLATE = LOCALE / "messages.pot"
STALE = "run scripts/catalog.sh"


def _msgid(message: str | Iterable[str]) -> str:
    """The singular msgid, whether or not the message has plural forms."""
    return message if isinstance(message, str) else next(iter(message))


@functools.cache
def source_messages() -> frozenset[str]:
    """Every msgid in the portal's Python code and templates, as pybabel extracts them."""
    mapping = ROOT / "babel.cfg"
    with mapping.open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, str(mapping))  # type: ignore[no-untyped-call]
    found = {
        _msgid(message)
        for _filename, _lineno, message, _comments, _context in extract_from_dir(
            ROOT, method_map, options_map
        )
    }
    found.discard("")
    return frozenset(found)


@functools.cache
def catalogue(path: Path) -> Catalog:
    with path.open("rb") as po:
        return read_po(po)


def po_path(lang: str) -> Path:
    return LOCALE / lang / "LC_MESSAGES" / "messages.po"


def msgids(catalog: Catalog) -> set[str]:
    return {_msgid(m.id) for m in catalog if m.id}


def translations(string: str | Iterable[str] | None) -> list[str]:
    if string is None:
        return []
    return [string] if isinstance(string, str) else list(string)


def fields(text: str) -> set[str]:
    """The names of the str.format fields in ``text``: ``{address}`` gives ``address``."""
    return {name for _literal, name, _spec, _conv in Formatter().parse(text) if name is not None}


def layout(text: str) -> list[str | None]:
    """The shape of a multi-line text: blank lines and lines holding nothing but a
    placeholder (``    {link}``) as they are, lines of prose as None."""
    shape: list[str | None] = []
    for line in text.split("\n"):
        bare = line.strip()
        placeholder = bare.startswith("{") and bare.endswith("}") and fields(bare) == {bare[1:-1]}
        shape.append(line if not bare or placeholder else None)
    return shape


# -- completeness ---------------------------------------------------------------------------


def test_sources_have_messages() -> None:
    messages = source_messages()
    # From a template, from Python via _ = visitor.gettext, and via visitor.gettext itself.
    assert "Sign in" in messages
    assert "The password must have at least 12 characters." in messages
    assert "The current password is not correct." in messages
    # Implicitly concatenated literals are one message.
    assert any(m.startswith("Too many unsuccessful attempts. ") for m in messages)


def test_template_is_up_to_date() -> None:
    template = msgids(catalogue(TEMPLATE))
    sources = source_messages()
    assert template == sources, (
        f"src/sigillo/portal/locale/messages.pot is out of date: {STALE}.\n"
        f"In the sources but not in the template: {sorted(sources - template)}\n"
        f"In the template but no longer in the sources: {sorted(template - sources)}"
    )


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_catalogue_follows_the_template(lang: str) -> None:
    template = msgids(catalogue(TEMPLATE))
    messages = msgids(catalogue(po_path(lang)))
    assert messages == template, (
        f"locale/{lang}/LC_MESSAGES/messages.po does not follow messages.pot: {STALE}.\n"
        f"Missing: {sorted(template - messages)}\n"
        f"Obsolete: {sorted(messages - template)}"
    )


def test_every_message_is_translated_to_italian() -> None:
    italian = catalogue(po_path("it"))
    problems = []
    for msgid in sorted(source_messages()):
        message = italian.get(msgid)
        if message is None:
            problems.append(f"missing ({STALE}): {msgid!r}")
        elif not (strings := translations(message.string)) or not all(strings):
            problems.append(f"not translated: {msgid!r}")
        elif message.fuzzy:
            problems.append(f"fuzzy (check the translation, then drop the flag): {msgid!r}")
    assert not problems, "locale/it/LC_MESSAGES/messages.po:\n" + "\n".join(problems)


def test_translations_keep_placeholders_line_breaks_and_percent_signs() -> None:
    problems = []
    for lang in i18n.LANGUAGES:
        for message in catalogue(po_path(lang)):
            if not message.id:
                continue
            msgid = _msgid(message.id)
            for text in translations(message.string):
                if not text:
                    continue
                try:
                    wanted, got = fields(msgid), fields(text)
                except ValueError as exc:
                    problems.append(f"{lang}: {msgid!r}: not a format string ({exc})")
                    continue
                if got != wanted:
                    problems.append(
                        f"{lang}: {msgid!r}: placeholders {sorted(got)}, expected {sorted(wanted)}"
                    )
                elif layout(text) != layout(msgid):
                    problems.append(f"{lang}: {msgid!r}: line breaks differ from the msgid")
                elif text.count("%") != msgid.count("%"):
                    # Jinja's newstyle gettext %-formats every template message.
                    problems.append(f"{lang}: {msgid!r}: a '%' the msgid does not have")
    assert not problems, "\n".join(problems)


def test_layout_sees_the_link_line() -> None:
    text = "Open this link:\n\n    {link}\n\nThanks."
    assert layout(text) == [None, "", "    {link}", "", None]
    assert layout("Apri il link: {link}") == [None]


# -- the language a visitor gets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "default", "expected"),
    [
        ("it-IT,it;q=0.9,en;q=0.8", "en", "it"),
        ("en-US", "it", "en"),
        ("de-DE,fr", "en", "en"),
        ("de-DE,fr", "it", "it"),
        ("fr;q=1,it;q=0.5", "en", "it"),
        ("en;q=0.4,it;q=0.6", "en", "it"),
        ("it_IT", "en", "it"),
        ("IT-ch", "en", "it"),
        ("it;q=0,en", "it", "en"),
        # A q-value that is no number is skipped, whatever it was attached to.
        ("it;q=abc,en;q=0.5", "it", "en"),
        ("it;q=,en;q=0.1", "it", "en"),
        ("en;q=high", "it", "it"),
        ("", "it", "it"),
        (None, "en", "en"),
        (None, "it", "it"),
    ],
)
def test_negotiate(header: str | None, default: str, expected: str) -> None:
    assert negotiate(header, default) == expected


@pytest.mark.parametrize("q", ["nan", "inf", "2"])
def test_negotiate_skips_non_numeric_q_words(q: str) -> None:
    assert negotiate(f"it;q={q},en;q=0.5", "it") == "en"


# -- translations and formats ---------------------------------------------------------------


def test_load_translations() -> None:
    assert load_translations("it").gettext("Sign in") == "Accedi"
    assert load_translations("en").gettext("Sign in") == "Sign in"
    assert load_translations("it").gettext("Up to {size} in all.").format(size="1 MB") == (
        "Fino a 1 MB in totale."
    )
    # Something no catalogue knows comes back as it was.
    assert load_translations("it").gettext("No such message") == "No such message"


def test_italian_dates_and_sizes() -> None:
    formats = Formats("it", "Europe/Rome")
    # Shown in the configured zone, and saying which.
    assert formats.datetime(datetime(2026, 3, 5, 14, 7, 9, tzinfo=UTC)) == (
        "5 mar 2026, 15:07:09 CET"
    )
    assert formats.datetime(None) == ""
    assert formats.size(999) == "999 B"
    assert formats.size(1234) == "1,2 KB"
    assert formats.size(1_572_864) == "1,5 MB"
    assert formats.size(2 * 1024**3) == "2 GB"
    assert formats.size(1000 * 1024**4) == "1.024.000 GB"


def test_english_dates_and_sizes() -> None:
    formats = Formats("en")
    written = formats.datetime(datetime(2026, 3, 5, 14, 7, 9, tzinfo=UTC))
    assert written.startswith("Mar 5, 2026, 2:07:09")
    assert written.endswith("PM UTC")
    assert formats.size(1234) == "1.2 KB"
    assert formats.size(1_572_864) == "1.5 MB"
    assert formats.size(25 * 1024**2) == "25 MB"


def test_unknown_language_formats_as_english() -> None:
    assert Formats("xx-nowhere").size(1_572_864) == "1.5 MB"
