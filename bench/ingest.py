"""Webhook ingest through the real HTTP service, side by side with a bare INSERT endpoint.

Starts ``chatbuffer api`` (the real process: signature check, parsing, intake transaction) and
``bench/bare_insert.py`` (a bare Starlette endpoint doing one INSERT of the raw body) on the same
database, then in the same run:

1. closed loop: ``wrk`` (``--latency``, ``bench/wrk_signed.lua``) against each, reporting req/s,
   p50/p99 and the service's share of the bare endpoint's throughput;
2. open loop (``--rate``, default 500 req/s): a request is sent at every tick of a fixed schedule
   whether or not earlier ones were answered (a new connection is opened when all are busy), and
   latency is counted from the scheduled instant, so a stall is not hidden by the sender waiting
   (no coordinated omission; wrk2 is not available here).

Every delivery is a realistic, signed ``message_created`` webhook with its own message id, spread
over ``--conversations`` conversations (so most messages extend an open buffer and some open
one). Run by hand:

    uv run python bench/ingest.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    uv run python bench/ingest.py --database-url sqlite

For PostgreSQL the URL's database is only used to create (and drop) a scratch database; for
SQLite a fresh file under a temporary directory is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import orjson
import uvloop
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from chatbuffer.simulator import payloads
from chatbuffer.storage import database

BENCH = Path(__file__).resolve().parent
SECRET = "bench-webhook-secret-0123456789"
ACCOUNT = 1
PATH = "/webhooks/chatwoot"


@dataclass(frozen=True, slots=True)
class Delivery:
    stamp: str
    signature: str
    body: bytes


def deliveries(first_id: int, count: int, conversations: int) -> Iterator[Delivery]:
    now = datetime.now(UTC)
    stamp = int(now.timestamp())
    for n in range(count):
        message_id = first_id + n
        body = orjson.dumps(
            payloads.incoming_text(
                message_id=message_id,
                content=f"hello, this is message {message_id}; where is my order?",
                created_at=now,
                account_id=ACCOUNT,
                conversation_id=1 + message_id % conversations,
            )
        )
        headers = payloads.sign(SECRET, body, stamp)
        yield Delivery(str(stamp), headers["X-Chatwoot-Signature"], body)


def write_wrk_files(folder: Path, first_id: int, per_thread: int, threads: int, conv: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for thread in range(threads):
        start = first_id + thread * per_thread
        with (folder / f"requests_{thread}.tsv").open("wb") as out:
            for d in deliveries(start, per_thread, conv):
                out.write(f"{d.stamp}\t{d.signature}\t".encode() + d.body + b"\n")


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Process:
    name: str
    url: str
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(name: str, argv: list[str], env: dict[str, str], port: int, log: Path) -> Process:
    with log.open("ab") as handle:
        popen = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
    process = Process(name, f"http://127.0.0.1:{port}", popen)
    deadline = time.monotonic() + 60
    with httpx2.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise SystemExit(f"{name} exited:\n{log.read_text()}")
            try:
                # Any answer means it listens; the bare endpoint has no health route.
                client.get(f"{process.url}/healthz", timeout=1)
                return process
            except httpx2.HTTPError:
                time.sleep(0.1)
    process.stop()
    raise SystemExit(f"{name} did not start:\n{log.read_text()}")


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def run_wrk(url: str, folder: Path, *, threads: int, connections: int, seconds: int) -> Figures:
    argv = [
        shutil.which("wrk") or "/usr/bin/wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(BENCH / "wrk_signed.lua"),
        url + PATH,
        "--",
        str(folder),
    ]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Figures(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=total,
        errors=errors,
    )


class _Closed(Exception):
    """The server closed the connection before answering."""


def _request_bytes(host: str, d: Delivery) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Chatwoot-Timestamp: {d.stamp}\r\nX-Chatwoot-Signature: {d.signature}\r\n"
        f"Content-Length: {len(d.body)}\r\n\r\n"
    )
    return head.encode() + d.body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    status_line = await reader.readline()
    if not status_line:
        raise _Closed
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def open_loop(url: str, requests: list[bytes], rate: float) -> Figures:
    """Send ``requests`` at ``rate`` per second on a fixed schedule; latency from the schedule."""
    host, port = url.removeprefix("http://").split(":")
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float, request: bytes) -> None:
        nonlocal errors
        conn = idle.pop() if idle else await asyncio.open_connection(host, int(port))
        try:
            status = await _exchange(*conn, request)
        except _Closed:
            # The server ended an idle keep-alive connection: send again on a new one.
            conn[1].close()
            conn = await asyncio.open_connection(host, int(port))
            status = await _exchange(*conn, request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn[1].close()
            return
        latencies.append((time.perf_counter() - scheduled) * 1000)
        if status != 200:
            errors += 1
        idle.append(conn)

    for _ in range(32):  # warm connections, like a proxy's keep-alive pool
        idle.append(await asyncio.open_connection(host, int(port)))
    tasks = []
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    started = time.perf_counter()
    for n, request in enumerate(requests):
        scheduled = started + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, request)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for _, writer in idle:
        writer.close()
    ordered = sorted(latencies)
    return Figures(
        requests_per_s=len(latencies) / elapsed,
        p50_ms=statistics.median(ordered),
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        requests=len(requests),
        errors=errors,
    )


# -- databases ---------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(url: str, folder: Path) -> Iterator[str]:
    if url == "sqlite" or make_url(url).get_backend_name() == "sqlite":
        path = folder / "bench.db"
        yield f"sqlite:///{path}"
        return
    admin = create_engine(database.sync_url(url), isolation_level="AUTOCOMMIT")
    name = f"chatbuffer_ingest_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def stored_messages(url: str) -> int:
    engine = create_engine(database.sync_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM buffered_messages")) or 0)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="sqlite", help="PostgreSQL admin URL or sqlite")
    parser.add_argument("--seconds", type=int, default=15, help="closed-loop duration per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500, help="open-loop req/s (0: skip)")
    parser.add_argument("--open-seconds", type=int, default=10)
    parser.add_argument("--max-rate", type=int, default=4000, help="sizes the request files")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="chatbuffer-ingest-"))
    processes: list[Process] = []
    try:
        with scratch_database(args.database_url, folder) as url:
            database.migrate(url)
            per_thread = args.max_rate * args.seconds // args.threads + 1000
            closed_ids = 1
            write_wrk_files(
                folder / "service", closed_ids, per_thread, args.threads, args.conversations
            )
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "CHATWOOT_WEBHOOK_SECRET": SECRET,
                "LOG_LEVEL": "INFO",
            }
            service_port, bare_port = free_port(), free_port()
            service = start(
                "chatbuffer api",
                [sys.executable, "-m", "chatbuffer", "api", "--port", str(service_port)],
                env,
                service_port,
                folder / "service.log",
            )
            processes.append(service)
            bare = start(
                "bare insert",
                [
                    sys.executable,
                    str(BENCH / "bare_insert.py"),
                    "--database-url",
                    url,
                    "--port",
                    str(bare_port),
                ],
                env,
                bare_port,
                folder / "bare.log",
            )
            processes.append(bare)
            load = {"threads": args.threads, "connections": args.connections}
            results: dict[str, Figures] = {}
            results["service"] = run_wrk(
                service.url, folder / "service", seconds=args.seconds, **load
            )
            results["bare"] = run_wrk(bare.url, folder / "service", seconds=args.seconds, **load)
            if results["service"].requests > per_thread * args.threads:
                print("warning: the service ran out of distinct deliveries; raise --max-rate")
            if args.rate > 0:
                count = int(args.rate * args.open_seconds)
                first = closed_ids + per_thread * args.threads
                host = service.url.removeprefix("http://")
                requests = [
                    _request_bytes(host, d) for d in deliveries(first, count, args.conversations)
                ]
                # uvloop keeps the sender's own CPU cost (it shares the machine) low.
                results["service open loop"] = uvloop.run(
                    open_loop(service.url, requests, args.rate)
                )
                results["bare open loop"] = uvloop.run(open_loop(bare.url, requests, args.rate))
            for process in processes:
                process.stop()
            processes.clear()
            stored = stored_messages(url)
        backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
        print(
            f"{backend}, wrk -t{args.threads} -c{args.connections} -d{args.seconds}s; "
            f"open loop {args.rate:g} req/s for {args.open_seconds} s; "
            f"{args.conversations} conversations"
        )
        print(
            f"{'target':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>7}"
        )
        for name, f in results.items():
            print(
                f"{name:<20} {f.requests_per_s:>9.0f} {f.p50_ms:>8.2f} {f.p99_ms:>8.2f} "
                f"{f.requests:>9} {f.errors:>7}"
            )
        ratio = results["service"].requests_per_s / results["bare"].requests_per_s
        print(f"service / bare throughput: {ratio:.3f}; messages stored by the service: {stored}")
    finally:
        for process in processes:
            process.stop()
        if args.keep_logs:
            print(f"logs in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
