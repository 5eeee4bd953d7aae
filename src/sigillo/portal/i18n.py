"""Languages of the portal and the staff console: English and Italian, every string from a
Babel catalogue.

Catalogues are the ``.po`` files under ``locale/``; they are compiled in memory when the
portal starts, so the repository holds no generated binaries.
"""

from __future__ import annotations

import functools
import gettext
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from io import BytesIO
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

LANGUAGES = ("en", "it")
LANGUAGE_NAMES = {"en": "English", "it": "Italiano"}
"""Each language named in itself, as a language switch shows it."""


def load_translations(lang: str) -> gettext.GNUTranslations:
    po = resources.files("sigillo.portal").joinpath(f"locale/{lang}/LC_MESSAGES/messages.po")
    with po.open("rb") as source:
        catalog = read_po(source, locale=lang)
    return _compiled(catalog)


def load_catalogues(package: str, lang: str) -> gettext.GNUTranslations:
    """Every ``.po`` file under ``package``'s ``locale/<lang>/LC_MESSAGES/``, as one catalogue.

    Several files let several areas of an application keep their strings apart (the staff
    console's sign-in and administration pages in ``staff.po``, its other pages in files of
    their own), so adding a page never means editing another page's catalogue. A message id
    translated differently in two files is an error, never a silent choice.
    """
    folder = resources.files(package).joinpath(f"locale/{lang}/LC_MESSAGES")
    merged = Catalog(locale=lang)
    origin: dict[str, str] = {}
    for po in sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".po")),
        key=lambda entry: entry.name,
    ):
        with po.open("rb") as source:
            catalog = read_po(source, locale=lang)
        for message in catalog:
            if not message.id or not isinstance(message.id, str) or message.fuzzy:
                continue  # the header, plural entries (not used), unchecked translations
            known = merged.get(message.id)
            if known is not None and known.string != message.string:
                raise ValueError(
                    f"{po.name} and {origin[message.id]} translate {message.id!r} differently"
                )
            merged.add(message.id, message.string)
            origin[message.id] = po.name
    return _compiled(merged)


def _compiled(catalog: Catalog) -> gettext.GNUTranslations:
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def negotiate(accept_language: str | None, default: str) -> str:
    """The first of our languages the browser asks for (by its q-values), else ``default``."""
    if not accept_language:
        return default
    wanted: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
            if not 0 <= quality <= 1:  # also refuses nan
                continue
        wanted.append((-quality, position, tag.strip().replace("_", "-").lower()))
    for quality, _, tag in sorted(wanted):
        if quality >= 0:
            continue
        primary = tag.split("-")[0]
        if primary in LANGUAGES:
            return primary
    return default


@functools.cache
def _locale(lang: str) -> Locale:
    try:
        return Locale.parse(lang)
    except (ValueError, UnknownLocaleError):
        return Locale.parse("en")


@dataclass(frozen=True)
class Formats:
    """Dates and sizes as a reader of ``lang`` expects them."""

    lang: str
    timezone: str = "UTC"

    @property
    def locale(self) -> Locale:
        return _locale(self.lang)

    def datetime(self, value: datetime | None) -> str:
        if value is None:
            return ""
        zone = ZoneInfo(self.timezone)
        shown = format_datetime(value, format="medium", tzinfo=zone, locale=self.locale)
        return f"{shown} {format_datetime(value, format='zzz', tzinfo=zone, locale=self.locale)}"

    def size(self, size: int) -> str:
        units = ("B", "KB", "MB", "GB")
        value = float(size)
        unit = 0
        # Binary multiples, as the configuration's sizes are, under the labels people know.
        while value >= 1024 and unit < len(units) - 1:
            value /= 1024
            unit += 1
        pattern = "#,##0" if unit == 0 else "#,##0.#"
        return f"{format_decimal(value, format=pattern, locale=self.locale)} {units[unit]}"
