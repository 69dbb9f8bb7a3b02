"""The operators' live controls over HTTP: what ``chatbuffer flags``, ``rollout``, ``pause`` and
``resume`` do, for tools that cannot reach the database, and one buffer read back
(``chatbuffer buffers show``). Behind the same bearer token as the rest of the admin API.

Bodies are small JSON objects; anything else is answered 4xx with ``{"error": ...}``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatbuffer.domain import control
from chatbuffer.domain.control import Controls
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.ports import Clock, ControlSource, ControlWriter, StoredBurst
from chatbuffer.domain.shadow import is_shadow
from chatbuffer.web.admin import ADMIN_PREFIX, AdminRefused, authoriser

#: Longest JSON body a control change may send.
MAX_BODY_BYTES = 4_096


class ControlAccess(ControlSource, ControlWriter, Protocol):
    """Reads and changes the live controls."""


class BufferReader(Protocol):
    async def stored_burst(self, buffer_id: uuid.UUID) -> StoredBurst | None: ...


def controls_json(controls: Controls) -> dict[str, Any]:
    pause = controls.pause
    return {
        "flags": [
            {
                "name": flag.value,
                "on": controls.flags.get(flag, flag.default),
                "description": flag.description,
                "inboxes": {
                    str(inbox): on
                    for (f, inbox), on in sorted(controls.inbox_flags.items())
                    if f is flag
                },
            }
            for flag in Flag
        ],
        "rollout": {
            "percent": controls.rollout_percent,
            "canaries": sorted(controls.canaries),
            "shadow": controls.shadow,
        },
        "pause": {
            "paused": pause.paused,
            "paused_by": pause.paused_by,
            "paused_at": pause.paused_at.isoformat() if pause.paused_at else None,
            "resumed_by": pause.resumed_by,
            "resumed_at": pause.resumed_at.isoformat() if pause.resumed_at else None,
        },
    }


def burst_json(burst: StoredBurst) -> dict[str, Any]:
    answer = burst.answer
    return {
        "buffer_id": str(burst.buffer_id),
        "account_id": burst.key.account_id,
        "conversation_id": burst.key.conversation_id,
        "status": burst.status,
        "last_message_at": burst.last_message_at.isoformat(),
        "messages": [
            {
                "chatwoot_message_id": m.chatwoot_message_id,
                "content": m.content,
                "received_at": m.received_at.isoformat(),
            }
            for m in burst.messages
        ],
        "answer": None
        if answer is None
        else {
            "kind": answer.kind,
            "content": answer.content,
            "chatwoot_message_id": None
            if is_shadow(answer.chatwoot_message_id)
            else answer.chatwoot_message_id,
            "sent": answer.chatwoot_message_id is not None
            and not is_shadow(answer.chatwoot_message_id),
            # Shadow mode recorded it; nothing reached Chatwoot.
            "shadow": is_shadow(answer.chatwoot_message_id),
        },
    }


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise AdminRefused("the body is too large", status_code=413)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise AdminRefused("the body is not JSON", status_code=400) from None
    if not isinstance(body, dict):
        raise AdminRefused("the body must be a JSON object", status_code=422)
    return body


def _on_off(body: dict[str, Any], *, allowed: tuple[str, ...] = ("on", "off")) -> str:
    value = body.get("value")
    if isinstance(value, bool):
        value = "on" if value else "off"
    if value not in allowed:
        raise AdminRefused(
            f"value must be one of {', '.join(allowed)}, not {value!r}", status_code=422
        )
    return str(value)


def _who(body: dict[str, Any]) -> str:
    by = body.get("by", "admin API")
    if not isinstance(by, str) or not by.strip() or len(by) > 200:
        raise AdminRefused("by must be a name of at most 200 characters", status_code=422)
    return by.strip()


def controls_router(
    *,
    access: Callable[[], ControlAccess],
    buffers: BufferReader | None,
    token: str | None,
    clock: Clock,
) -> APIRouter:
    """``access`` gives the store once the app has opened it (in its lifespan)."""
    authorise = authoriser(token)
    router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin: live controls"])

    async def current() -> JSONResponse:
        stored = await access().read_controls()
        return JSONResponse(controls_json(control.parse(stored.flags, stored.values)))

    @router.get("/controls")
    @router.get("/flags")
    @router.get("/rollout")
    async def read_controls(request: Request) -> JSONResponse:
        """Every live control: flags (global and per inbox), the rollout, the kill switch."""
        authorise(request)
        return await current()

    @router.put("/flags/{name}")
    async def set_flag(request: Request, name: str) -> JSONResponse:
        """``{"value": "on"|"off"}``, or with ``"inbox": ID`` also ``"default"`` (the inbox
        follows the global value again). Every process follows within 5 s."""
        authorise(request)
        known = {f.value: f for f in Flag}
        if name not in known:
            raise AdminRefused(
                f"unknown flag {name!r}; use one of {', '.join(known)}", status_code=404
            )
        body = await _body(request)
        inbox = body.get("inbox")
        if inbox is not None and (
            not isinstance(inbox, int) or isinstance(inbox, bool) or not 1 <= inbox <= 2**31 - 1
        ):
            raise AdminRefused("inbox must be a Chatwoot inbox id", status_code=422)
        flag = known[name]
        if inbox is None:
            value = _on_off(body)
            await access().set_flag(flag, value == "on")
        else:
            value = _on_off(body, allowed=("on", "off", "default"))
            await access().set_values(
                {control.inbox_flag_name(flag, inbox): None if value == "default" else value}
            )
        return await current()

    @router.put("/rollout/percent")
    async def set_percent(request: Request) -> JSONResponse:
        """``{"percent": 0..100}``: the share of conversations on the buffered path."""
        authorise(request)
        percent = (await _body(request)).get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int | float | str):
            raise AdminRefused("percent must be a number from 0 to 100", status_code=422)
        try:
            stored = control.percent_value(str(percent))
        except ValueError as exc:
            raise AdminRefused(str(exc), status_code=422) from None
        await access().set_values({control.ROLLOUT_PERCENT: stored})
        return await current()

    @router.put("/rollout/shadow")
    async def set_shadow(request: Request) -> JSONResponse:
        """``{"value": "on"|"off"}``: shadow mode for the buffered path (records, sends nothing)."""
        authorise(request)
        on = _on_off(await _body(request)) == "on"
        await access().set_values({control.ROLLOUT_SHADOW: "on" if on else None})
        return await current()

    @router.put("/rollout/canaries/{canary}")
    async def allow(request: Request, canary: str) -> JSONResponse:
        """Always put ``inbox:ID`` or ``contact:ID`` on the buffered path."""
        authorise(request)
        await access().set_values({_canary(canary): "on"})
        return await current()

    @router.delete("/rollout/canaries/{canary}")
    async def disallow(request: Request, canary: str) -> JSONResponse:
        """Remove a canary."""
        authorise(request)
        await access().set_values({_canary(canary): None})
        return await current()

    @router.post("/pause")
    async def pause(request: Request) -> JSONResponse:
        """The kill switch (``{"by": NAME}`` optional): within 5 s no process answers or posts
        anything; messages are still stored."""
        authorise(request)
        by = _who(await _body(request))
        await access().set_values(control.pause_values(by, clock.now()))
        return await current()

    @router.post("/resume")
    async def resume(request: Request) -> JSONResponse:
        """Answer again: fresh bursts are answered, stale ones go to a human."""
        authorise(request)
        by = _who(await _body(request))
        await access().set_values(control.resume_values(by, clock.now()))
        return await current()

    if buffers is not None:
        reader = buffers

        @router.get("/buffers/{buffer_id}")
        async def show_buffer(request: Request, buffer_id: str) -> JSONResponse:
            """One buffer: its messages and what the bot posted for it, or recorded in shadow."""
            authorise(request)
            try:
                parsed = uuid.UUID(buffer_id)
            except ValueError:
                raise AdminRefused(f"{buffer_id!r} is not a buffer id", status_code=422) from None
            burst = await reader.stored_burst(parsed)
            if burst is None:
                raise AdminRefused(f"no buffer {parsed} with messages", status_code=404)
            return JSONResponse(burst_json(burst))

    return router


def _canary(text: str) -> str:
    try:
        return control.canary_name(text.strip())
    except ValueError as exc:
        raise AdminRefused(str(exc), status_code=422) from None
