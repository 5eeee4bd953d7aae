"""The conversation: every message of one thread, attachments, and the reply form.

Each handler first finds the conversation among the signed-in address's own; anything else
is a 404, whether it belongs to someone else, never existed, or has expired. A closed
conversation (expired, withdrawn by the sender, or with its content destroyed) shows why and
whom to contact; its attachments and the reply form answer 404.
"""

from __future__ import annotations

from sqlalchemy import select
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sigillo.portal.compose import Upload
from sigillo.portal.conversations import Closed, ReplyDraft
from sigillo.portal.mailview import content_disposition
from sigillo.portal.pages.base import Portal, utcnow
from sigillo.portal.sessions import SignedIn
from sigillo.store import audit
from sigillo.store.models import Conversation

MAX_BODY = 100_000
"""Characters in a reply's text."""
MAX_ATTACHMENTS = 10
MAX_ID = 2**31 - 1
"""Larger ids exist nowhere (and would overflow PostgreSQL's integer)."""


def _id(request: Request) -> int:
    conversation_id: int = request.path_params["conversation"]
    if conversation_id > MAX_ID:
        raise HTTPException(404)
    return conversation_id


def routes(portal: Portal) -> list[Route]:
    async def own(user: SignedIn, request: Request) -> Conversation:
        conversation = await portal.conversations.owned(_id(request), user.address)
        if conversation is None:
            raise HTTPException(404)
        return conversation

    async def latest(request: Request) -> Response:
        visitor, user = await portal.member(request)
        async with portal.store.session() as session:
            newest = (
                await session.execute(
                    select(Conversation.id)
                    .where(Conversation.recipient == user.address)
                    .order_by(Conversation.last_message_at.desc())
                    .limit(1)
                )
            ).scalar()
        if newest is None:
            return portal.render(
                visitor,
                "notice.html",
                title=visitor.gettext("No messages"),
                text=visitor.gettext("There are no messages for this address."),
                link=None,
            )
        return portal.redirect(visitor, f"/conversations/{newest}")

    async def show(request: Request, *, errors: list[str] | None = None) -> Response:
        visitor, user = await portal.member(request)
        found = await portal.conversations.owned_with_messages(_id(request), user.address)
        if found is None:
            raise HTTPException(404)
        conversation, messages = found
        now = utcnow()
        if portal.conversations.expired(conversation, now):
            return await portal.expired(visitor, conversation)
        thread = await portal.conversations.thread(conversation, messages)
        await audit.log(
            portal.store,
            "portal.view",
            actor=user.address,
            at=now,
            client=visitor.client,
            conversation_id=conversation.id,
        )
        notice = request.query_params.get("sent")
        return portal.render(
            visitor,
            "conversation.html",
            status=400 if errors else 200,
            here=f"/conversations/{conversation.id}",
            thread=thread,
            errors=errors or [],
            sent=notice == "1",
            copy_sent=notice == "copy",
            max_upload=portal.settings.portal.max_upload_size,
        )

    async def reply(request: Request) -> Response:
        visitor, user = await portal.member(request)
        conversation = await own(user, request)
        now = utcnow()
        if portal.conversations.expired(conversation, now):
            raise HTTPException(404)
        form = await portal.form(
            request, visitor, limit=portal.settings.portal.max_upload_size, files=MAX_ATTACHMENTS
        )
        _ = visitor.gettext
        try:
            body = form.get("body")
            text = body.replace("\r\n", "\n") if isinstance(body, str) else ""
            uploads = [
                Upload(
                    item.filename or "",
                    item.content_type or "application/octet-stream",
                    await item.read(),
                )
                for item in form.getlist("attachments")
                if isinstance(item, UploadFile) and (item.filename or item.size)
            ]
        finally:
            await form.close()
        errors = []
        if not text.strip() and not uploads:
            errors.append(_("Write a message or attach a file."))
        if len(text) > MAX_BODY:
            errors.append(_("The message is too long."))
        if errors:
            return await show(request, errors=errors)
        thread = await portal.conversations.thread(conversation)
        draft = ReplyDraft(
            body=text,
            attachments=tuple(uploads),
            send_copy=form.get("send_copy") is not None,
            copy_note=_(
                "This is the copy you asked for of your reply in the secure portal. It was "
                "sent by ordinary email, so its security cannot be guaranteed."
            ),
        )
        try:
            sent = await portal.conversations.reply(
                conversation, thread, draft, visitor.client, now
            )
        except Closed:
            raise HTTPException(404) from None
        if sent is None:
            return await show(
                request,
                errors=[
                    _("This conversation cannot be answered here. Please write to the sender.")
                ],
            )
        portal.outbox.queued()
        flag = "copy" if draft.send_copy else "1"
        return portal.redirect(visitor, f"/conversations/{conversation.id}?sent={flag}#reply")

    async def download(request: Request) -> Response:
        visitor, user = await portal.member(request)
        conversation = await own(user, request)
        now = utcnow()
        if portal.conversations.expired(conversation, now):
            raise HTTPException(404)
        message_id = request.path_params["message"]
        index = int(request.path_params["index"])
        found = await portal.conversations.attachment(conversation, message_id, index)
        if found is None:
            raise HTTPException(404)
        info, data = found
        await audit.log(
            portal.store,
            "portal.download",
            actor=user.address,
            at=now,
            client=visitor.client,
            conversation_id=conversation.id,
            message_id=message_id,
            details={"attachment": index, "size": len(data)},
        )
        # Never rendered by the browser: a download, whatever the sender declared.
        response = Response(data, media_type="application/octet-stream")
        response.headers["Content-Disposition"] = content_disposition(info.name)
        return portal.finish(visitor, response)

    return [
        Route("/conversations", latest, methods=["GET"]),
        Route("/conversations/{conversation:int}", show, methods=["GET"]),
        Route("/conversations/{conversation:int}/reply", reply, methods=["POST"]),
        Route(
            "/conversations/{conversation:int}/messages/{message:str}/attachments/{index:int}",
            download,
            methods=["GET"],
        ),
    ]
