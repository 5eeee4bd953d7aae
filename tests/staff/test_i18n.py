"""The console's languages: every message in its sources (Python: ``_``, ``gettext``,
``N_``; templates: ``_``) has an Italian translation in one of the Italian catalogues, with the
same placeholders; the catalogues of one language never disagree; both languages list the
same messages."""

from __future__ import annotations

import functools
from pathlib import Path
from string import Formatter

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from sigillo.portal.i18n import load_catalogues

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


def catalogues(lang: str) -> dict[str, Catalog]:
    folder = ROOT / "locale" / lang / "LC_MESSAGES"
    result = {}
    for po in sorted(folder.glob("*.po")):
        with po.open("rb") as source:
            result[po.name] = read_po(source, locale=lang)
    return result


def fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in Formatter().parse(text) if name is not None}


def test_the_sources_have_messages() -> None:
    assert "Staff sign-in" in source_messages()
    assert "Staff accounts" in source_messages()  # an N_() navigation label
    assert "The two passwords are not the same." in source_messages()  # shared rules


def test_every_message_is_translated_to_italian() -> None:
    translated: dict[str, str] = {}
    for catalog in catalogues("it").values():
        for message in catalog:
            if message.id and isinstance(message.string, str) and not message.fuzzy:
                translated[str(message.id)] = message.string
    missing = sorted(m for m in source_messages() if not translated.get(m))
    assert missing == []
    for msgid in source_messages():
        assert fields(translated[msgid]) == fields(msgid), msgid
        assert "%" not in msgid.replace("%%", "") or "%%" in translated[msgid], msgid


@pytest.mark.parametrize("lang", ["en", "it"])
def test_catalogues_load_and_agree(lang: str) -> None:
    load_catalogues("sigillo.staff", lang)  # raises on two translations of one msgid


def test_both_languages_list_the_same_messages() -> None:
    def ids(lang: str) -> set[str]:
        return {str(m.id) for c in catalogues(lang).values() for m in c if m.id}

    assert ids("en") == ids("it")


def test_a_message_translated_differently_in_two_files_is_refused(tmp_path: Path) -> None:
    import shutil
    import sys

    package = tmp_path / "twofiles"
    folder = package / "locale" / "it" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (folder / "a.po").write_text('msgid "Save"\nmsgstr "Salva"\n')
    (folder / "b.po").write_text('msgid "Save"\nmsgstr "Registra"\n')
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ValueError, match="translate 'Save' differently"):
            load_catalogues("twofiles", "it")
        (folder / "b.po").write_text('msgid "Save"\nmsgstr "Salva"\n')
        assert load_catalogues("twofiles", "it").gettext("Save") == "Salva"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("twofiles", None)
        shutil.rmtree(package)
