"""``create_asgi_app``: FastAPI routes over an already-wired intake.

The webhook handler reads the raw body itself: the signature covers the exact bytes, and the size
cap must hold before anything is parsed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatbuffer.domain.ports import BufferAdmin, Clock
from chatbuffer.errors import (
    MalformedPayload,
    PayloadTooLarge,
    StorageUnavailable,
    WebhookRejected,
)
from chatbuffer.intake import signature
from chatbuffer.web.admin import admin_router

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/chatwoot"
NOT_STORED = "the service could not store the event; try again"


@dataclass(frozen=True, slots=True)
class WebConfig:
    webhook_secret: str | None
    max_body_bytes: int
    signature_max_age_s: int
    admin_token: str | None = None


def create_asgi_app(
    *,
    handle: Callable[[Any], Awaitable[Mapping[str, Any]]],
    ping: Callable[[], Awaitable[None]],
    clock: Clock,
    config: WebConfig,
    lifespan: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    admin: BufferAdmin | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if lifespan is None:
            yield
            return
        async with lifespan():
            yield

    app = FastAPI(
        title="chatbuffer",
        summary="Buffers a WhatsApp contact's burst of Chatwoot messages and answers once.",
        version="0.1.0",
        lifespan=_lifespan,
    )

    @app.exception_handler(WebhookRejected)
    async def _rejected(_request: Request, exc: WebhookRejected) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, _exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request"}, status_code=422)

    # A webhook that was not stored must not be acknowledged. The answer is 500, not 503:
    # Chatwoot's agent-bot job retries a delivery (twice, 3 s apart) only on 429 and 500, and
    # gives the conversation to humans after any other failure (docs/chatwoot.md §2.3).
    @app.exception_handler(StorageUnavailable)
    async def _unavailable(_request: Request, exc: StorageUnavailable) -> JSONResponse:
        logger.warning("webhook not stored: %s", exc)
        return JSONResponse({"error": NOT_STORED}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        # Never our internals in the answer; the traceback goes to the log.
        logger.exception("webhook could not be processed")
        return JSONResponse({"error": NOT_STORED}, status_code=500)

    @app.post(
        WEBHOOK_PATH,
        openapi_extra={
            # Described here because the handler reads the raw bytes itself; the fuzz suite
            # generates requests from this description.
            "parameters": [
                {
                    "name": "X-Chatwoot-Signature",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "sha256=<hex HMAC of '{timestamp}.{body}'>",
                },
                {
                    "name": "X-Chatwoot-Timestamp",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Unix seconds when Chatwoot signed the delivery.",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {"description": "Stored, ignored, or recognised as a duplicate."},
                "400": {"description": "The body is not JSON."},
                "401": {"description": "Missing, stale or wrong signature."},
                "413": {"description": "The body is larger than WEBHOOK_MAX_BODY_BYTES."},
                "422": {"description": "The JSON is not a Chatwoot event we can read."},
                "500": {"description": "Not stored (the database is unavailable); retry."},
            },
        },
    )
    async def chatwoot_webhook(request: Request) -> JSONResponse:
        """Receive one Chatwoot event (account webhook or Agent Bot)."""
        body = await _read_capped(request, config.max_body_bytes)
        if config.webhook_secret is not None:
            signature.verify(
                secret=config.webhook_secret,
                body=body,
                timestamp=request.headers.get("x-chatwoot-timestamp"),
                signature=request.headers.get("x-chatwoot-signature"),
                now=clock.now(),
                max_age_s=config.signature_max_age_s,
            )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MalformedPayload("the body is not valid JSON") from None
        result = await handle(payload)
        return JSONResponse(dict(result), status_code=200)

    if admin is not None:
        app.include_router(admin_router(admin=admin, token=config.admin_token, clock=clock))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """The database answers."""
        try:
            await ping()
        except Exception as exc:
            logger.warning("readiness check failed: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ready", "database": "ok"})

    return app


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        except ValueError:
            raise MalformedPayload("Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
