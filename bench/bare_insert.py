"""The baseline for bench/ingest.py: a bare Starlette endpoint doing one INSERT of the raw body.

Same server stack as the service (uvicorn, uvloop, httptools, one process), same database, one
autocommit INSERT per request (PostgreSQL through a psycopg pool of the service's default size;
SQLite through one connection on one thread, WAL and ``synchronous=FULL`` like the service).

    python bench/bare_insert.py --database-url URL --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TABLE = "bench_raw_webhooks"


def postgres_inserter(url: str, pool_size: int) -> tuple[Callable[[bytes], Awaitable[None]], Any]:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = AsyncConnectionPool(
        conninfo,
        min_size=pool_size,
        max_size=pool_size,
        kwargs={"autocommit": True},
        open=False,
    )

    async def insert(body: bytes) -> None:
        async with pool.connection() as conn:
            await conn.execute(f"INSERT INTO {TABLE} (body) VALUES (%s)", (body.decode(),))

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body text NOT NULL)"
            )
        try:
            yield
        finally:
            await pool.close()

    return insert, lifespan


def sqlite_inserter(url: str) -> tuple[Callable[[bytes], Awaitable[None]], Any]:
    path = make_url(url).database or ""
    thread = ThreadPoolExecutor(max_workers=1)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")

    def write(body: bytes) -> None:
        conn.execute(f"INSERT INTO {TABLE} (body) VALUES (?)", (body.decode(),))

    async def insert(body: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(thread, write, body)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            yield
        finally:
            thread.shutdown()
            conn.close()

    return insert, lifespan


def build(url: str, pool_size: int) -> Starlette:
    if make_url(url).get_backend_name() == "sqlite":
        insert, lifespan = sqlite_inserter(url)
    else:
        insert, lifespan = postgres_inserter(url, pool_size)

    async def webhook(request: Request) -> Response:
        await insert(await request.body())
        return Response(b'{"status":"stored"}', media_type="application/json")

    @asynccontextmanager
    async def app_lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with lifespan():
            yield

    return Starlette(
        routes=[Route("/webhooks/chatwoot", webhook, methods=["POST"])], lifespan=app_lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    uvicorn.run(
        build(args.database_url, args.pool_size),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
