"""The worker's own small HTTP listener: ``GET /metrics`` and ``GET /healthz``.

A worker serves no web app, and uvicorn would take over the worker's signal handling; a scrape
is one short GET, which asyncio's streams answer in a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from chatbuffer.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The exposition's bytes and content type (``Runtime.metrics_page``).
MetricsPage = Callable[[], Awaitable[tuple[bytes, str]]]

_READ_TIMEOUT_S = 5.0
_HEALTHY = b'{"status":"ok"}'


@asynccontextmanager
async def metrics_listener(page: MetricsPage, host: str, port: int) -> AsyncIterator[int]:
    """Serve until the block exits; yields the bound port (``port=0``: any free one)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                request = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(request)
            if method != "GET":
                status, body, content_type = "405 Method Not Allowed", b"", "text/plain"
            elif path == "/metrics":
                body, content_type = await page()
                status = "200 OK"
            elif path == "/healthz":
                status, body, content_type = "200 OK", _HEALTHY, "application/json"
            else:
                status, body, content_type = "404 Not Found", b"", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away or never finished its request: nobody to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(answer, host, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve the worker's metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound = int(server.sockets[0].getsockname()[1])
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()


def _request_line(request: bytes) -> tuple[str, str]:
    first = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(first) < 2:
        return "", ""
    return first[0], first[1].split("?", 1)[0]
