"""What an HTML part shows and where it leads: visible text, links with their text, forms.

Built on the stdlib's tolerant tokenizer (html.parser), never on patterns over markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

_HIDDEN = frozenset({"script", "style", "template", "head", "title"})
_BLOCK = frozenset(
    {"p", "br", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table",
     "ul", "ol", "blockquote", "hr", "section", "article", "header", "footer", "form"}
)  # fmt: skip


@dataclass(frozen=True)
class Anchor:
    href: str
    text: str
    """What the reader sees as the link: its text and image alt texts, whitespace collapsed."""


@dataclass(frozen=True)
class Form:
    action: str | None
    has_password: bool


@dataclass
class HtmlContent:
    text: str = ""
    anchors: list[Anchor] = field(default_factory=list)
    forms: list[Form] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.anchors: list[Anchor] = []
        self.forms: list[Form] = []
        self._hidden = 0
        self._href: str | None = None
        self._link_text: list[str] = []
        self._form: list[tuple[str | None, bool]] = []
        self._stray_password = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _BLOCK:
            self.text.append("\n\n")
        if tag in ("a", "area"):
            self._close_anchor()
            if "href" in values:
                self._href = values["href"]
                if tag == "area":
                    self._link_text.append(values.get("alt", ""))
                    self._close_anchor()
        elif tag == "img" and self._href is not None:
            self._link_text.append(values.get("alt", ""))
        elif tag == "form":
            self._form.append((values.get("action"), False))
        elif tag == "input" and values.get("type", "").strip().lower() == "password":
            if self._form:
                action, _ = self._form[-1]
                self._form[-1] = (action, True)
            else:
                self._stray_password = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN:
            self._hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK:
            self.text.append("\n\n")
        if tag == "a":
            self._close_anchor()
        elif tag == "form" and self._form:
            self.forms.append(Form(*self._form.pop()))

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self.text.append(data)
        if self._href is not None:
            self._link_text.append(data)

    def _close_anchor(self) -> None:
        if self._href is not None:
            self.anchors.append(
                Anchor(self._href.strip(), " ".join(" ".join(self._link_text).split()))
            )
        self._href = None
        self._link_text = []

    def finish(self) -> HtmlContent:
        self._close_anchor()
        # An unclosed form still shows; a password box outside any form still asks.
        self.forms.extend(Form(action, has_password) for action, has_password in self._form)
        if self._stray_password:
            self.forms.append(Form(None, True))
        return HtmlContent("".join(self.text), self.anchors, self.forms)


def parse_html(markup: str) -> HtmlContent:
    reader = _Reader()
    try:
        reader.feed(markup)
        reader.close()
    # The tokenizer has raised on odd markup (marked sections) in some Python versions; what
    # was read up to there is kept: a partial reading, never none.
    except Exception:  # noqa: S110
        pass
    return reader.finish()
