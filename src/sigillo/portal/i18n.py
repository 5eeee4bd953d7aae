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


def load_translations(
    lang: str, package: str = "sigillo.portal", domain: str = "messages"
) -> gettext.GNUTranslations:
    """``package``'s catalogue ``locale/<lang>/LC_MESSAGES/<domain>.po``, compiled: the
    portal's ``messages``, the staff console's ``staff`` (``sigillo.staff``)."""
    po = resources.files(package).joinpath(f"locale/{lang}/LC_MESSAGES/{domain}.po")
    with po.open("rb") as source:
        catalog = read_po(source, locale=lang)
    return _compiled(catalog)


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
