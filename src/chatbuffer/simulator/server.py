"""Run an ASGI app on a real loopback socket inside the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

StopServer = Callable[[], Awaitable[None]]

_STARTUP_TIMEOUT_S = 10.0
_SHUTDOWN_GRACE_S = 5


class _EmbeddedServer(uvicorn.Server):
    # The host program owns the signal handlers. Letting each embedded server swap them would
    # leave a stopped server's handler installed when two servers stop in a different order than
    # they started, and Ctrl-C would then be swallowed.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_in_background(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, StopServer]:
    """Start ``app`` with uvicorn on ``host`` (an ephemeral port by default).

    Returns the base URL (``http://127.0.0.1:<port>``) and a coroutine function that stops the
    server and waits for in-flight requests to finish. Raises ``RuntimeError`` if the server
    cannot start (e.g. the port is taken). Websockets are disabled: nothing here needs them.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws="none",
        access_log=False,
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_S,
    )
    server = _EmbeddedServer(config)

    async def run() -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind or the app's startup fails; inside a
            # shared event loop that would stop the loop itself, so make it an ordinary error.
            raise RuntimeError(f"uvicorn failed to start (exit code {exc.code})") from exc

    task = asyncio.create_task(run(), name=f"uvicorn {host}:{port}")

    async def wait_started() -> None:
        while not server.started:
            if task.done():
                # Surface the bind/startup error instead of a timeout.
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(wait_started(), _STARTUP_TIMEOUT_S)
    except BaseException:
        server.should_exit = True
        task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        raise

    bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{url_host}:{bound_port}"

    async def stop() -> None:
        server.should_exit = True
        await task

    return url, stop
