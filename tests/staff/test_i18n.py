"""The console's languages: every message in its sources (Python: ``_``, ``gettext``,
``N_``; templates: ``_``) has an Italian translation, with the same placeholders, and both
languages' catalogues list the same messages."""

from __future__ import annotations

import functools
from pathlib import Path
from string import Formatter

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from sigillo.portal.i18n import load_translations

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "src" / "sigillo" / "staff"


@functools.cache
def source_messages() -> frozenset[str]:
    """Every msgid the console shows, as scripts/catalog.sh extracts them (babel-staff.cfg:
    the console's code and templates, and the password rules it shares with the portal)."""
    mapping = REPO / "babel-staff.cfg"
    with mapping.open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, str(mapping))  # type: ignore[no-untyped-call]
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        REPO,
        method_map,
        options_map,
        keywords={"_": None, "gettext": None, "N_": None},
    ):
        found.add(message if isinstance(message, str) else message[0])
    found.discard("")
    return frozenset(found)


def catalogue(lang: str) -> Catalog:
    with (ROOT / "locale" / lang / "LC_MESSAGES" / "staff.po").open("rb") as source:
        return read_po(source, locale=lang)


def fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in Formatter().parse(text) if name is not None}


def test_the_sources_have_messages() -> None:
    assert "Staff sign-in" in source_messages()
    assert "Staff accounts" in source_messages()  # an N_() navigation label
    assert "The two passwords are not the same." in source_messages()  # shared rules


def test_every_message_is_translated_to_italian() -> None:
    translated: dict[str, str] = {}
    for message in catalogue("it"):
        if message.id and isinstance(message.string, str) and not message.fuzzy:
            translated[str(message.id)] = message.string
    missing = sorted(m for m in source_messages() if not translated.get(m))
    assert missing == []
    for msgid in source_messages():
        assert fields(translated[msgid]) == fields(msgid), msgid
        assert "%" not in msgid.replace("%%", "") or "%%" in translated[msgid], msgid


def test_the_console_speaks_italian() -> None:
    italian = load_translations("it", "sigillo.staff", "staff")
    assert italian.gettext("Staff sign-in") != "Staff sign-in"
    english = load_translations("en", "sigillo.staff", "staff")
    assert english.gettext("Staff sign-in") == "Staff sign-in"


def test_both_languages_list_the_same_messages() -> None:
    def ids(lang: str) -> set[str]:
        return {str(m.id) for m in catalogue(lang) if m.id}

    assert ids("en") == ids("it")
