"""The portal's view of a stored message: hostile HTML, headers and names never get through."""

from __future__ import annotations

import base64
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from sigillo.portal.mailview import (
    MAX_PARTS,
    content_disposition,
    open_attachment,
    parse_message,
    safe_filename,
    sanitize_html,
)

CORPUS = sorted((Path(__file__).parent.parent / "corpus").glob("*.eml"))


def mail(*lines: str | bytes, body: bytes = b"") -> bytes:
    head = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\r\n" for x in lines)
    return head + b"\r\n" + body


# --- HTML ----------------------------------------------------------------------------------

HOSTILE_HTML = {
    "script": ("<p>hi</p><script>alert(1)</script>", ["<script", "alert"]),
    "img onerror": ('<img src=x onerror="alert(1)">', ["<img", "onerror", "alert"]),
    "onclick": ('<p onclick="alert(1)">x</p>', ["onclick", "alert"]),
    "onmouseover": ('<a href="https://ok.example/" onmouseover="alert(1)">x</a>', ["onmouse"]),
    "javascript href": ('<a href="javascript:alert(1)">x</a>', ["javascript", "href"]),
    "mixed-case scheme": ('<a href="JaVaScRiPt:alert(1)">x</a>', ["javascript", "href"]),
    "entity scheme": ('<a href="&#106;avascript:alert(1)">x</a>', ["avascript", "href"]),
    "tab in scheme": ('<a href="java\tscript:alert(1)">x</a>', ["script", "href"]),
    "data url link": ('<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>', ["data:", "href"]),
    "data url image": ('<img src="data:image/png;base64,iVBORw0KGgo=">', ["data:", "<img"]),
    "style block": ("<style>body{display:none}</style><p>x</p>", ["<style", "display"]),
    "style overlay": (
        '<div style="position:fixed;top:0;left:0;width:100%;height:100%">Sign in</div>',
        ["style", "position", "fixed"],
    ),
    "remote image": ('<img src="https://tracker.example/p.gif">', ["tracker.example", "<img"]),
    "background attribute": (
        '<table background="https://tracker.example/bg.gif"><tr>'
        '<td background="https://tracker.example/td.gif">x</td></tr></table>',
        ["tracker.example", "background"],
    ),
    "svg onload": ("<svg onload=alert(1)><circle r=1 /></svg>", ["<svg", "onload", "circle"]),
    "iframe": ('<iframe src="https://evil.example/"></iframe>', ["<iframe", "evil.example"]),
    "form": (
        '<form action="https://evil.example/steal"><input name=password><button>Go</button></form>',
        ["<form", "action", "evil.example", "<input", "<button"],
    ),
    "base": ('<base href="https://evil.example/"><a href="x">x</a>', ["<base", "evil.example"]),
    "meta refresh": (
        '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
        ["<meta", "refresh", "evil.example"],
    ),
    "link stylesheet": ('<link rel=stylesheet href="https://evil.example/x.css">', ["<link"]),
    "object and embed": (
        '<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/">',
        ["<object", "<embed", "evil.example"],
    ),
    "video and audio": (
        '<video src="https://evil.example/v.mp4" poster="https://evil.example/p.png"></video>'
        '<audio src="https://evil.example/a.mp3"></audio>',
        ["<video", "<audio", "evil.example"],
    ),
    "comment": ("<p>a</p><!-- internal: password hint -->", ["<!--", "password"]),
    "conditional comment": (
        "<!--[if mso]><script>alert(1)</script><![endif]--><p>x</p>",
        ["<!--", "[if", "script", "alert"],
    ),
    "class and id": ('<div class="admin" id="csrf">x</div>', ["class", "id=", "admin", "csrf"]),
    "name clobbering": ('<a name="location" href="https://ok.example/">x</a>', ["name="]),
    "relative link": ('<a href="/account/delete">x</a>', ["href", "/account"]),
    "protocol-relative link": ('<a href="//evil.example/x">x</a>', ["href", "evil.example"]),
    "target": ('<a href="https://ok.example/" target="_top">x</a>', ["target", "_top"]),
    "math": ('<math><maction actiontype="statusline">x</maction></math>', ["<math", "maction"]),
}


@pytest.mark.parametrize(("html", "forbidden"), list(HOSTILE_HTML.values()), ids=list(HOSTILE_HTML))
def test_hostile_html_does_not_survive(html: str, forbidden: list[str]) -> None:
    clean = str(sanitize_html(html)).lower()
    for needle in forbidden:
        assert needle.lower() not in clean


def test_formatting_and_plain_links_are_kept() -> None:
    html = (
        "<h1>Results</h1><p>Dear <b>Anna</b>, <i>see</i> <em>below</em>.</p>"
        "<ul><li>one</li></ul><table><tbody><tr><td colspan=2>cell</td></tr></tbody></table>"
        '<a href="https://portal.example/x?a=1&amp;b=2">link</a>'
        ' <a href="mailto:a@org.example">m</a>'
    )
    clean = sanitize_html(html)
    assert isinstance(clean, Markup)
    for kept in ("<h1>Results</h1>", "<b>Anna</b>", "<i>see</i>", "<li>one</li>", 'colspan="2"'):
        assert kept in clean
    assert (
        '<a href="https://portal.example/x?a=1&amp;b=2" rel="noopener noreferrer nofollow">'
        in clean
    )
    assert '<a href="mailto:a@org.example" rel="noopener noreferrer nofollow">' in clean


def test_every_link_gets_rel() -> None:
    clean = str(sanitize_html('<a href="https://x.example/" rel="opener">x</a><a>y</a>'))
    assert clean.count('rel="noopener noreferrer nofollow"') == 2
    assert "opener" not in clean.replace("noopener", "")


def test_sanitize_takes_any_string() -> None:
    assert "x" in sanitize_html("\ud800x\x00<p")


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("C:\\Users\\anna\\report.docx", "report.docx"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("\u2067evil\u2069\u200f\u200e\u061c.pdf", "evil.pdf"),
        ("report\x00.pdf", "report.pdf"),
        ("report\r\nContent-Type: text-html.pdf", "report Content-Type: text-html.pdf"),
        ("  many   spaces\there .pdf ", "many spaces here .pdf"),
        (".htaccess", "htaccess"),
        (". . .bashrc", "bashrc"),
        ("résumé €.pdf", "résumé €.pdf"),
        ("r\udcc3\udca9sum\udcc3\udca9.pdf", "résumé.pdf"),
    ],
)
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name, 0) == expected


@pytest.mark.parametrize("name", [None, "", "   ", "/", "..", "../", "\u202e", "\x00\x01"])
def test_safe_filename_falls_back(name: str | None) -> None:
    assert safe_filename(name, 2) == "attachment-3"


def test_safe_filename_caps_length_keeping_a_short_extension() -> None:
    long = safe_filename("a" * 10_000 + ".pdf", 0)
    assert len(long) == 120
    assert long.endswith("a.pdf")
    assert len(safe_filename("b" * 10_000, 0)) == 120
    odd = safe_filename("c" * 200 + "." + "d" * 11, 0)
    assert odd == "c" * 120
    spaced = safe_filename("e" * 118 + "       f.zip", 0)
    assert len(spaced) <= 120
    assert spaced.endswith(".zip")


def test_content_disposition() -> None:
    assert content_disposition('résumé "x";%.pdf') == (
        'attachment; filename="r_sum_ _x___.pdf"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22%3B%25.pdf"
    )
    header = content_disposition("a\r\nb\\c")
    assert "\r" not in header
    assert "\n" not in header
    assert header == "attachment; filename=\"a__b_c\"; filename*=UTF-8''a%0D%0Ab%5Cc"
    assert content_disposition("plain-name_1.txt") == (
        "attachment; filename=\"plain-name_1.txt\"; filename*=UTF-8''plain-name_1.txt"
    )
    name = 'été \u202e/;\\"%.pdf'
    encoded = content_disposition(name).partition("filename*=UTF-8''")[2]
    assert urllib.parse.unquote(encoded, errors="strict") == name


# --- messages ------------------------------------------------------------------------------

ALTERNATIVE = mail(
    "From: =?utf-8?q?=C3=89lise_Martin?= <elise@Org.Example>",
    "To: Anna Rossi <anna@home.example>",
    "Subject: =?utf-8?b?UsOpc3VsdGF0cw==?= of 3 June",
    "Date: Tue, 03 Jun 2025 10:15:00 +0200",
    "Message-ID: <m3@org.example>",
    "References: <m1@org.example> <m2@org.example>",
    "In-Reply-To: <m2@org.example>",
    "Reply-To: Clinic desk <desk@org.example>, other@org.example",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="alt"',
    body=(
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Dear Anna,\r\nyour r=C3=A9sults are ready.\r\n"
        b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p onclick="x()">Dear Anna,</p><img src="https://tracker.example/p.gif">\r\n'
        b"--alt--\r\n"
    ),
)


def test_alternative_fills_both_bodies_and_the_headers() -> None:
    view = parse_message(ALTERNATIVE)
    assert view.sender == "Élise Martin <elise@Org.Example>"
    assert view.to == "Anna Rossi <anna@home.example>"
    assert view.subject == "Résultats of 3 June"
    assert view.date == datetime(2025, 6, 3, 8, 15, tzinfo=UTC)
    assert view.date is not None
    assert view.date.tzinfo is not None
    assert view.message_id == "<m3@org.example>"
    assert view.references == ("<m1@org.example>", "<m2@org.example>")
    assert view.reply_to == "desk@org.example"
    assert view.from_address == "elise@org.example"
    assert view.text == "Dear Anna,\nyour résults are ready."
    assert isinstance(view.html, Markup)
    assert view.html == "<p>Dear Anna,</p>"
    assert view.attachments == ()
    for field in (view.sender, view.to, view.subject):
        assert not isinstance(field, Markup)


def test_missing_headers() -> None:
    view = parse_message(b"\r\nonly a body\r\n")
    assert (view.sender, view.to, view.subject) == ("", "", "")
    assert view.date is None
    assert view.message_id is None
    assert view.references == ()
    assert view.reply_to is None
    assert view.from_address is None
    assert view.text == "only a body\n"
    assert view.html is None


def test_dates() -> None:
    unknown_zone = parse_message(mail("Date: Tue, 03 Jun 2025 10:15:00 -0000")).date
    assert unknown_zone == datetime(2025, 6, 3, 10, 15, tzinfo=UTC)
    assert parse_message(mail("Date: yesterday-ish")).date is None
    assert parse_message(mail("Date: Tue, 03 Jun 99999 10:15:00 +0000")).date is None


def test_addresses_that_cannot_be_mailed_are_not_offered() -> None:
    view = parse_message(mail("From: Anna <not an address>", "Reply-To: undisclosed:;"))
    assert view.from_address is None
    assert view.reply_to is None
    view = parse_message(mail("From: x@localhost", "Reply-To: <>"))
    assert view.from_address is None
    assert view.reply_to is None
    assert view.sender == "x@localhost"
    view = parse_message(mail(b"From: caf\xc3\xa9@x.example", b"Reply-To: a\xff@x.example"))
    assert view.from_address is None
    assert view.reply_to is None
    assert view.sender == "café@x.example"


def test_threading_ids_are_deduplicated_and_never_carry_line_breaks() -> None:
    view = parse_message(
        mail(
            "Message-ID: junk <a@x.example> <b@x.example>",
            "References: <r1@x> <r2@x>\r\n\t<r1@x> <bad\x01id@x> <sp ace@x>",
            "In-Reply-To: <r3@x> (comment) <r2@x>",
        )
    )
    assert view.message_id == "<a@x.example>"
    assert view.references == ("<r1@x>", "<r2@x>", "<r3@x>")
    assert parse_message(mail("Message-ID: no-brackets@x.example")).message_id is None


def test_hostile_subject_is_one_clean_line() -> None:
    view = parse_message(
        mail(
            "Subject: Invoice =?utf-8?q?a=0D=0ABcc:_evil@x.example?= \x07ding",
            "From: =?utf-8?q?Bank=0D=0A?= <x@evil.example>",
        )
    )
    assert view.subject == "Invoice a Bcc: evil@x.example ding"
    assert "\r" not in view.sender
    assert "\n" not in view.sender


def test_bidi_overrides_are_removed_from_headers() -> None:
    subject = "=?utf-8?b?" + base64.b64encode("Pay \u202eexe.pdf\u202c now".encode()).decode()
    view = parse_message(mail(f"Subject: {subject}?=", "To: \u2066a@x.example".encode()))
    assert view.subject == "Pay exe.pdf now"
    assert view.to == "a@x.example"


def test_long_headers_are_truncated() -> None:
    view = parse_message(
        mail("Subject: " + "word " * 100_000, "From: " + "Name " * 200 + "<a@x.example>")
    )
    assert len(view.subject) == 300
    assert view.subject.endswith("…")
    assert len(view.sender) == 500
    assert view.sender.endswith("…")


def test_raw_utf8_headers() -> None:
    view = parse_message(mail("Subject: caf\xc3\xa9 \xff ok".encode("latin-1")))
    assert view.subject == "café \ufffd ok"


MIXED = mail(
    "From: desk@org.example",
    'Content-Type: multipart/mixed; boundary="mix"',
    body=(
        b"--mix\r\nContent-Type: text/plain\r\n\r\nSee the attachments.\r\n"
        b"--mix\r\nContent-Type: application/PDF; name=ignored.pdf\r\n"
        b'Content-Disposition: attachment; filename="../../lab results.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"%PDF-1.7 " + bytes(range(256)))
        + b"--mix\r\nContent-Type: image/png\r\n"
        b"Content-Disposition: inline; filename*=utf-8''%C3%A9chographie%E2%80%AEgpj.exe\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
        b"--mix--\r\n"
    ),
)


def test_mixed_with_two_attachments() -> None:
    view = parse_message(MIXED)
    assert view.text == "See the attachments."
    assert [(a.index, a.name, a.content_type, a.size) for a in view.attachments] == [
        (0, "lab results.pdf", "application/pdf", 265),
        (1, "échographiegpj.exe", "image/png", 8),
    ]
    info, data = open_attachment(MIXED, 0)
    assert info == view.attachments[0]
    assert data == b"%PDF-1.7 " + bytes(range(256))
    info, data = open_attachment(MIXED, 1)
    assert info == view.attachments[1]
    assert data == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("index", [2, -1, 10**9])
def test_missing_attachment(index: int) -> None:
    with pytest.raises(LookupError):
        open_attachment(MIXED, index)


def test_encoded_word_filename_and_attachment_rules() -> None:
    raw = mail(
        'Content-Type: multipart/mixed; boundary="b"',
        body=(
            b'--b\r\nContent-Type: application/pdf; name="=?utf-8?b?w6l0w6kucGRm?="\r\n\r\nx\r\n'
            b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnotes\r\n"
            b"--b\r\nContent-Type: text/html; name=page.html\r\n\r\n<p>page</p>\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nsecond text part\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nthird\r\n"
            b"--b\r\nContent-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n"
            b"--b--\r\n"
        ),
    )
    view = parse_message(raw)
    assert view.text == "second text part"
    assert view.html is None
    assert [(a.name, a.content_type) for a in view.attachments] == [
        ("été.pdf", "application/pdf"),
        ("attachment-2", "text/plain"),
        ("page.html", "text/html"),
        ("attachment-4", "text/plain"),
        ("attachment-5", "text/calendar"),
    ]
    assert open_attachment(raw, 2)[1] == b"<p>page</p>"


def test_attached_message_is_one_eml_attachment() -> None:
    inner = mail(
        "From: lab@org.example",
        "Subject: Lab/report 12",
        'Content-Type: multipart/mixed; boundary="in"',
        body=b"--in\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--in--\r\n",
    )
    raw = mail(
        'Content-Type: multipart/mixed; boundary="out"',
        body=b"--out\r\nContent-Type: text/plain\r\n\r\nForwarded.\r\n"
        b"--out\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--out--\r\n",
    )
    view = parse_message(raw)
    assert view.text == "Forwarded."
    assert [(a.name, a.content_type) for a in view.attachments] == [
        ("Lab_report 12.eml", "message/rfc822")
    ]
    info, data = open_attachment(raw, 0)
    assert info.size == len(data)
    again = parse_message(data)
    assert again.subject == "Lab/report 12"
    assert again.text == "inner text"
    named = raw.replace(b"message/rfc822\r\n", b"message/rfc822; name=fwd\r\n")
    assert parse_message(named).attachments[0].name == "fwd.eml"


def test_iso_2022_jp_body() -> None:
    text = "こんにちは、結果が出ました。"
    raw = mail(
        "Subject: =?iso-2022-jp?b?" + base64.b64encode(text.encode("iso-2022-jp")).decode() + "?=",
        "Content-Type: text/plain; charset=ISO-2022-JP",
        "Content-Transfer-Encoding: 7bit",
        body=text.encode("iso-2022-jp"),
    )
    view = parse_message(raw)
    assert view.subject == text
    assert view.text == text


def test_windows_1252_body() -> None:
    text = "Café “quoted” – 5 €"
    raw = mail("Content-Type: text/plain; charset=windows-1252", body=text.encode("cp1252"))
    assert parse_message(raw).text == text


@pytest.mark.parametrize("charset", ["x-unknown", "rot13", "idna", "undefined", "utf-8\\0", '"'])
def test_unusable_charsets_read_as_utf8(charset: str) -> None:
    raw = mail(f"Content-Type: text/plain; charset={charset}", body="é ok".encode())
    assert parse_message(raw).text == "é ok"


def test_undeclared_eight_bit_is_utf8_and_controls_go() -> None:
    raw = mail(body=b"caf\xc3\xa9\x00\x1b[31m\r\nline\rtwo\xff")
    assert parse_message(raw).text == "café[31m\nline\ntwo\ufffd"


def test_html_only_message() -> None:
    raw = mail("Content-Type: text/html; charset=utf-8", body=b"<p>hi<script>x</script></p>")
    view = parse_message(raw)
    assert view.text is None
    assert view.html == "<p>hi</p>"


def test_base64_garbage() -> None:
    raw = mail(
        'Content-Type: multipart/mixed; boundary="b"',
        body=b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"!!!not*base64===\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n%%%=\r\n--b--\r\n",
    )
    view = parse_message(raw)
    assert view.text is not None
    assert len(view.attachments) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"--wrong\r\nContent-Type: text/plain\r\n\r\nlost\r\n--wrong--\r\n",
        b"--b\r\nContent-Type: text/plain\r\n\r\nunterminated",
        b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b--\r\n",
        b"",
    ],
)
def test_broken_boundaries(body: bytes) -> None:
    view = parse_message(
        mail("Subject: s", 'Content-Type: multipart/mixed; boundary="b"', body=body)
    )
    assert view.subject == "s"


def test_multipart_without_boundary() -> None:
    view = parse_message(mail("Content-Type: multipart/mixed", body=b"--x\r\n\r\nhi\r\n--x--"))
    assert view.text is None
    assert view.attachments == ()


def nested(depth: int, leaf: bytes = b"Content-Type: text/plain\r\n\r\ndeep") -> bytes:
    head = tail = b""
    for level in range(depth):
        head += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
        tail = b"\r\n--b%d--\r\n" % level + tail
    return b"Subject: nested\r\n" + head + leaf + tail


def test_nesting_is_capped() -> None:
    assert parse_message(nested(15)).text == "deep"
    view = parse_message(nested(40))
    assert view.subject == "nested"
    assert view.text is None


def test_nesting_beyond_the_parser_offers_the_message_whole() -> None:
    raw = nested(3000)
    view = parse_message(raw)
    assert view.subject == "nested"
    assert view.text is None
    assert [(a.name, a.content_type) for a in view.attachments] == [
        ("message.eml", "message/rfc822")
    ]
    assert open_attachment(raw, 0)[1] == raw


def test_deeply_nested_attached_messages() -> None:
    raw = b"Subject: in\r\n\r\nhi"
    for _ in range(400):
        raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
    view = parse_message(b"Subject: outer\r\n" + raw)
    assert view.subject == "outer"
    assert len(view.attachments) == 1


def test_part_count_is_capped() -> None:
    parts = b"".join(
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\n%d\r\n" % n for n in range(500)
    )
    view = parse_message(mail("Content-Type: multipart/mixed; boundary=b", body=parts + b"--b--"))
    assert len(view.attachments) == MAX_PARTS - 1  # the container is a part too
    assert [a.index for a in view.attachments] == list(range(MAX_PARTS - 1))


def test_huge_content_type_header() -> None:
    raw = mail("Content-Type: text/plain;" + " a=b;" * 100_000 + " charset=latin-1", body=b"x")
    assert parse_message(raw).text == "x"


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_malformed_corpus(path: Path) -> None:
    raw = path.read_bytes()
    view = parse_message(raw)
    for info in view.attachments:
        assert open_attachment(raw, info.index)[0] == info


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_give_a_view(raw: bytes) -> None:
    view = parse_message(raw)
    for info in view.attachments:
        assert info.name
        assert open_attachment(raw, info.index)[0] == info


FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="b"\r\n',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/html; charset=iso-2022-jp\r\n",
    b"Content-Type: text/plain; charset*=x''%FF\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''%E2%80; filename*1=\"x\"\r\n",
    b"Subject: =?utf-8?q?=FF=0D=0A?= =?bogus?b?!!?=\r\n",
    b'From: "((" <@>, =?utf-8?b?==?= <a@b.c>\r\n',
    b"Reply-To: a@b.c,,<x@[1.2.3.4]>\r\n",
    b"Date: Mon, 32 Foo 2025 99:99:99 +9999\r\n",
    b"References: <a@b> <<<>>>\r\n",
    b"\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"<script>alert(1)</script>\r\n",
    b"=?utf-8?b?w6k=?=\r\n",
    b"\xff\xfe\x00\r\n",
    b" folded continuation\r\n",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=20), max_size=40))
def test_mime_shaped_garbage_gives_a_view(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    view = parse_message(raw)
    assert "\n" not in view.subject
    assert "\r" not in view.sender
    for info in view.attachments:
        assert open_attachment(raw, info.index)[0] == info
