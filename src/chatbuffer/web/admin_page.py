"""The operators' page at ``/admin``: server-rendered, no script framework, behind ``ADMIN_TOKEN``.

The operator signs in once with the admin token; the page then keeps a session cookie derived
from the token (an HMAC, so the token itself never sits in the browser, and changing the token
signs every session out). The cookie is HttpOnly and SameSite=Strict, which also keeps other
sites from submitting the page's forms (replay) on the operator's behalf.

What it shows, refreshed every second by a small inline script that fetches ``/admin/panel``:
buffers still collecting messages with a countdown to their due time, buffers being answered,
recent turns and their outcome, failed buffers with a replay button, and the live controls.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from chatbuffer.domain.control import Controls
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.ports import BufferAdmin, BufferSummary, Clock

COOKIE = "chatbuffer_admin"
_SESSION_PURPOSE = b"chatbuffer admin page session v1"
_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
#: How many buffers each section lists.
SECTION_LIMIT = 50


def session_value(token: str) -> str:
    return hmac.new(token.encode(), _SESSION_PURPOSE, hashlib.sha256).hexdigest()


def admin_page_router(
    *,
    admin: BufferAdmin,
    token: str | None,
    clock: Clock,
    controls: Callable[[], Awaitable[Controls]] | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/admin", include_in_schema=False)

    def signed_in(request: Request) -> bool:
        given = request.cookies.get(COOKIE, "")
        return token is not None and hmac.compare_digest(given, session_value(token))

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = _TEMPLATES.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=_NO_STORE)

    @router.get("")
    async def home(request: Request, replayed: str | None = None) -> Response:
        if token is None:
            return page("admin_login.html", 403, error=_DISABLED, disabled=True)
        if not signed_in(request):
            return page("admin_login.html")
        return page("admin.html", panel=await _panel(admin, clock, controls), replayed=replayed)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if token is None:
            return page("admin_login.html", 403, error=_DISABLED, disabled=True)
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return page("admin_login.html", 401, error="That is not the admin token.")
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie(
            COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            path="/admin",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/admin", status_code=303)
        response.delete_cookie(COOKIE, path="/admin")
        return response

    @router.get("/panel")
    async def panel(request: Request) -> Response:
        if not signed_in(request):
            return HTMLResponse("signed out", status_code=401, headers=_NO_STORE)
        return page("admin_panel.html", panel=await _panel(admin, clock, controls))

    @router.post("/replay")
    async def replay(request: Request) -> Response:
        if not signed_in(request):
            return page("admin_login.html", 401, error="Sign in first.")
        form = await request.form()
        try:
            buffer_id = uuid.UUID(str(form.get("buffer_id", "")))
        except ValueError:
            return page("admin_login.html", 422, error="That is not a buffer id.")
        result, _ = await admin.replay(buffer_id, clock.now())
        return RedirectResponse(f"/admin?replayed={buffer_id}:{result}", status_code=303)

    return router


_DISABLED = "The admin page is disabled: set ADMIN_TOKEN to enable it."
_NO_STORE = {"Cache-Control": "no-store"}


async def _panel(
    admin: BufferAdmin, clock: Clock, controls: Callable[[], Awaitable[Controls]] | None
) -> dict[str, Any]:
    now = clock.now()

    async def section(status: str) -> list[dict[str, Any]]:
        return [_row(b, now) for b in await admin.list_buffers(status, SECTION_LIMIT)]

    current = await controls() if controls is not None else None
    return {
        "now_ms": _ms(now),
        "open": await section("active"),
        "answering": await section("closed") + await section("processing"),
        "recent": await section("completed"),
        "failed": await section("failed"),
        "controls": _controls(current) if current is not None else None,
    }


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _row(summary: BufferSummary, now: datetime) -> dict[str, Any]:
    return {
        "id": str(summary.buffer_id),
        "conversation": f"{summary.key.account_id}/{summary.key.conversation_id}",
        "status": summary.status,
        "messages": summary.message_count,
        "attempts": summary.attempts,
        "error": summary.error,
        "outcome": summary.outcome,
        "updated": summary.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        "due_ms": _ms(summary.due_at) if summary.due_at else None,
        "due_in_s": max(0.0, (summary.due_at - now).total_seconds()) if summary.due_at else None,
    }


def _controls(current: Controls) -> dict[str, Any]:
    return {
        "flags": [(f.value, current.flags.get(f, f.default), f.description) for f in Flag],
        "inbox_flags": sorted(
            (flag.value, inbox, on) for (flag, inbox), on in current.inbox_flags.items()
        ),
        "rollout_percent": current.rollout_percent,
        "canaries": sorted(current.canaries),
    }
