"""``create_asgi_app``: FastAPI routes over an already-wired intake.

The webhook handler reads the raw body itself: the signature covers the exact bytes, and the size
cap must hold before anything is parsed. Webhook deliveries are the hot path, so they are answered
straight from the ASGI call, past FastAPI's routing, dependency and middleware layers (a quarter of
a delivery's CPU, measured); the FastAPI route stays for the OpenAPI description and runs the same
code if it is ever reached.
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
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from chatbuffer.domain.control import Controls
from chatbuffer.domain.ports import BufferAdmin, Clock
from chatbuffer.errors import (
    MalformedPayload,
    PayloadTooLarge,
    StorageUnavailable,
    WebhookRejected,
)
from chatbuffer.intake import signature
from chatbuffer.web.admin import admin_router
from chatbuffer.web.admin_controls import BufferReader, ControlAccess, controls_router
from chatbuffer.web.admin_page import admin_page_router

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/chatwoot"
NOT_STORED = "the service could not store the event; try again"


#: ``GET /metrics``: the exposition's bytes and content type.
MetricsPage = Callable[[], Awaitable[tuple[bytes, str]]]


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
    controls: Callable[[], Awaitable[Controls]] | None = None,
    control_access: Callable[[], ControlAccess] | None = None,
    buffers: BufferReader | None = None,
    metrics: MetricsPage | None = None,
    on_rejected: Callable[[WebhookRejected], None] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if lifespan is None:
            yield
            return
        async with lifespan():
            yield

    webhook = _Webhook(handle=handle, clock=clock, config=config, on_rejected=on_rejected)
    app = _App(
        webhook,
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

    # The other routes (admin) answer failures the way a delivery does (see _Webhook.answer).
    @app.exception_handler(StorageUnavailable)
    async def _unavailable(_request: Request, exc: StorageUnavailable) -> JSONResponse:
        logger.warning("request not served: %s", exc)
        return JSONResponse({"error": NOT_STORED}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        logger.exception("request could not be processed")
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
    async def chatwoot_webhook(request: Request) -> Response:
        """Receive one Chatwoot event (account webhook or Agent Bot)."""
        status, body = await webhook.answer(request.headers.get, request.stream())
        return Response(body, status_code=status, media_type="application/json")

    if admin is not None:
        app.include_router(admin_router(admin=admin, token=config.admin_token, clock=clock))
        app.include_router(
            admin_page_router(admin=admin, token=config.admin_token, clock=clock, controls=controls)
        )
    if control_access is not None:
        app.include_router(
            controls_router(
                access=control_access, buffers=buffers, token=config.admin_token, clock=clock
            )
        )

    if metrics is not None:

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            """The process's Prometheus metrics (docs/observability.md)."""
            body, content_type = await metrics()
            return Response(body, media_type=content_type)

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


class _App(FastAPI):
    """FastAPI, with webhook deliveries answered before its routing (see the module docstring)."""

    def __init__(self, webhook: _Webhook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == WEBHOOK_PATH
            and not scope.get("root_path")
        ):
            await self._webhook.serve(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _Disconnected(Exception):
    """The sender went away before its body arrived: there is nobody to answer."""


class _Webhook:
    """One delivery: size cap, signature, JSON, the intake; always a JSON answer."""

    def __init__(
        self,
        *,
        handle: Callable[[Any], Awaitable[Mapping[str, Any]]],
        clock: Clock,
        config: WebConfig,
        on_rejected: Callable[[WebhookRejected], None] | None = None,
    ) -> None:
        self._handle = handle
        self._clock = clock
        self._config = config
        self._on_rejected = on_rejected

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = {b"content-length", b"x-chatwoot-timestamp", b"x-chatwoot-signature"}
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in wanted
        }
        try:
            status, body = await self.answer(headers.get, _chunks(receive))
        except _Disconnected:
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def answer(
        self, header: Callable[[str], str | None], chunks: AsyncIterator[bytes]
    ) -> tuple[int, bytes]:
        try:
            return 200, orjson.dumps(dict(await self._accept(header, chunks)))
        except WebhookRejected as exc:
            if self._on_rejected is not None:
                self._on_rejected(exc)
            return exc.status_code, orjson.dumps({"error": str(exc)})
        except _Disconnected:
            raise
        # A webhook that was not stored must not be acknowledged. The answer is 500, not 503:
        # Chatwoot's agent-bot job retries a delivery (twice, 3 s apart) only on 429 and 500,
        # and gives the conversation to humans after any other failure (docs/chatwoot.md §2.3).
        except StorageUnavailable as exc:
            logger.warning("webhook not stored: %s", exc)
        except Exception:
            # Never our internals in the answer; the traceback goes to the log.
            logger.exception("webhook could not be processed")
        return 500, _NOT_STORED_BODY

    async def _accept(
        self, header: Callable[[str], str | None], chunks: AsyncIterator[bytes]
    ) -> Mapping[str, Any]:
        config = self._config
        body = await _read_capped(header("content-length"), chunks, config.max_body_bytes)
        if config.webhook_secret is not None:
            signature.verify(
                secret=config.webhook_secret,
                body=body,
                timestamp=header("x-chatwoot-timestamp"),
                signature=header("x-chatwoot-signature"),
                now=self._clock.now(),
                max_age_s=config.signature_max_age_s,
            )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MalformedPayload("the body is not valid JSON") from None
        return await self._handle(payload)


_NOT_STORED_BODY = orjson.dumps({"error": NOT_STORED})


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _read_capped(declared: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        except ValueError:
            raise MalformedPayload("Content-Length is not a number") from None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
