"""The operators' API: see buffers that failed for good and replay them.

Every route needs ``Authorization: Bearer <ADMIN_TOKEN>``; without ``ADMIN_TOKEN`` configured the
routes answer 403, so a deployment that never set a token exposes nothing. Replaying changes
state, and listing shows customers' conversations, so both are behind the token.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import BufferAdmin, BufferSummary, Clock
from chatbuffer.errors import WebhookRejected

ADMIN_PREFIX = "/admin"
BUFFER_STATUSES = (
    "active",
    "closed",
    "processing",
    "completed",
    "superseded",
    "cancelled",
    "failed",
)


class AdminRefused(WebhookRejected):
    """An admin request without the right token, or for something that cannot be done."""


def summary_json(summary: BufferSummary) -> dict[str, Any]:
    return {
        "buffer_id": str(summary.buffer_id),
        "account_id": summary.key.account_id,
        "conversation_id": summary.key.conversation_id,
        "status": summary.status,
        "messages": summary.message_count,
        "attempts": summary.attempts,
        "error": summary.error,
        "outcome": summary.outcome,
        "updated_at": summary.updated_at.isoformat(),
        "due_at": summary.due_at.isoformat() if summary.due_at else None,
    }


def authoriser(token: str | None) -> Callable[[Request], None]:
    """The bearer-token check every admin route makes first."""

    def authorise(request: Request) -> None:
        if token is None:
            raise AdminRefused(
                "the admin API is disabled; set ADMIN_TOKEN to enable it", status_code=403
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Compared in constant time, so response timing says nothing about the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise AdminRefused("a valid admin token is required", status_code=401)

    return authorise


def admin_router(*, admin: BufferAdmin, token: str | None, clock: Clock) -> APIRouter:
    authorise = authoriser(token)

    router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin"])

    @router.get("/buffers")
    async def list_buffers(
        request: Request,
        status: str = Query("failed", description="buffer status to list"),
        limit: int = Query(50, ge=1, le=1000),
        account_id: int | None = Query(None, ge=1, le=2**31 - 1),
        conversation_id: int | None = Query(None, ge=1, le=2**31 - 1),
    ) -> JSONResponse:
        """Buffers with ``status`` (default ``failed``), newest first."""
        authorise(request)
        if status not in BUFFER_STATUSES:
            raise AdminRefused(
                f"unknown status {status!r}; use one of {', '.join(BUFFER_STATUSES)}",
                status_code=422,
            )
        if (account_id is None) != (conversation_id is None):
            raise AdminRefused("account_id and conversation_id go together", status_code=422)
        key = None
        if account_id is not None and conversation_id is not None:
            key = ConversationKey(account_id, conversation_id)
        found = await admin.list_buffers(status, limit, key)
        return JSONResponse({"buffers": [summary_json(s) for s in found]})

    @router.post("/buffers/{buffer_id}/replay")
    async def replay(request: Request, buffer_id: str) -> JSONResponse:
        """Answer a failed buffer again: due now, with a fresh set of attempts."""
        authorise(request)
        try:
            parsed = uuid.UUID(buffer_id)
        except ValueError:
            raise AdminRefused(f"{buffer_id!r} is not a buffer id", status_code=422) from None
        result, summary = await admin.replay(parsed, clock.now())
        if result == "not_found":
            raise AdminRefused(f"no buffer {parsed}", status_code=404)
        assert summary is not None
        if result == "not_failed":
            raise AdminRefused(
                f"buffer {parsed} is {summary.status}; only failed buffers can be replayed",
                status_code=409,
            )
        if result == "out_of_order":
            raise AdminRefused(
                f"buffer {parsed} is older than a burst of its conversation that was answered "
                "or taken over since; replaying it would answer out of order",
                status_code=409,
            )
        return JSONResponse({"status": "scheduled", "buffer": summary_json(summary)})

    return router
