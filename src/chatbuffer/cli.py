"""``chatbuffer``: the command line. Thin: it reads settings and calls ``app.Runtime``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from chatbuffer.domain.flags import Flag
from chatbuffer.errors import ChatbufferError, ConfigurationError
from chatbuffer.settings import Role, Settings, load_settings

if TYPE_CHECKING:
    from chatbuffer.app import PromptFiles

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatbuffer",
        description="Answer a WhatsApp contact's burst of Chatwoot messages once they pause.",
        epilog="Settings come from environment variables; see docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"chatbuffer {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in [
        ("serve", "webhook API and worker in one process (SQLite: migrates by itself)"),
        ("api", "only the webhook API (scale out: run several, plus workers)"),
    ]:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        sub.add_argument("--port", type=_port, default=8000, help="port to bind (default 8000)")
    worker = commands.add_parser("worker", help="only the worker that answers due buffers")
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the worker's /metrics and /healthz (default 127.0.0.1)",
    )
    worker.add_argument(
        "--metrics-port",
        type=_port_or_off,
        default=9464,
        help="port of the worker's /metrics and /healthz (default 9464; 0: none)",
    )
    buffers = commands.add_parser(
        "buffers",
        help="list failed buffers or replay one, through a running api (needs ADMIN_TOKEN)",
        description="Talks to a running `chatbuffer serve` or `api` with ADMIN_TOKEN.",
    )
    buffers.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="base URL of a running chatbuffer api (default http://127.0.0.1:8000)",
    )
    actions = buffers.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="buffers with a status, newest first")
    listing.add_argument("--status", default="failed", help="buffer status (default failed)")
    listing.add_argument("--limit", type=_positive_int, default=50, help="at most (default 50)")
    replay = actions.add_parser("replay", help="answer a failed buffer again, now")
    replay.add_argument("buffer_id", help="the buffer's id, as `buffers list` shows it")
    shown = actions.add_parser(
        "show", help="one buffer: its messages and what the bot posted, or recorded in shadow"
    )
    shown.add_argument("buffer_id", help="the buffer's id, as `buffers list` shows it")
    traced = actions.add_parser(
        "trace",
        help="one buffer's turn as JSON: messages, window, close reason, model requests, sends "
        "(reads DATABASE_URL; no api or token needed)",
    )
    traced.add_argument("buffer_id", type=_buffer_id, help="the buffer's id")
    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the database schema, or move it to a given revision",
        description="Without --to: upgrade to this release's newest revision. With --to: "
        "upgrade or downgrade to that revision (a rollback: see docs/runbook.md).",
    )
    migrate.add_argument(
        "--to",
        metavar="REVISION",
        help="the revision to move to, e.g. 0009 (downgrades too; `base` empties the schema)",
    )
    prompt = commands.add_parser(
        "prompt",
        help="see the exact request the model is sent, or try new instructions on stored bursts",
        description="Uses the same settings as a worker (the database, Chatwoot for the "
        "attachments, the model endpoint); posts nothing to Chatwoot and changes no row.",
    )
    prompt_actions = prompt.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = prompt_actions.add_parser(
        "show", help="print the exact request (JSON) the service sends for a stored buffer"
    )
    show.add_argument("buffer_id", type=_buffer_id, help="the buffer's id")
    show.add_argument(
        "--short-images",
        action="store_true",
        help="print each image's data: URL as its type and size instead of its bytes",
    )
    trial = prompt_actions.add_parser(
        "try",
        help="ask the model again about the last stored bursts and print old and new answers",
    )
    trial.add_argument(
        "--last", type=_positive_int, default=5, metavar="N", help="how many bursts (default 5)"
    )
    trial.add_argument(
        "--instructions",
        type=Path,
        metavar="FILE",
        help="try these instructions instead of the configured ones (for every inbox)",
    )
    prompt_actions.add_parser(
        "template", help="print the shipped prompt template (start of a PROMPT_TEMPLATE_FILE)"
    )
    flags = commands.add_parser(
        "flags",
        help="list the feature flags or turn one on or off, live (every process within 5 s)",
        description="Acts on the database named by DATABASE_URL; running processes see a change "
        "within 5 s, without a restart.",
    )
    flag_actions = flags.add_subparsers(dest="action", required=True, metavar="ACTION")
    flag_actions.add_parser("list", help="each flag, on or off, and the inboxes that differ")
    flag_set = flag_actions.add_parser("set", help="turn a flag on or off (for one inbox)")
    flag_set.add_argument(
        "name",
        choices=[f.value for f in Flag],
        metavar="NAME",
        help="one of: " + ", ".join(f.value for f in Flag),
    )
    flag_set.add_argument(
        "value",
        choices=["on", "off", "default"],
        metavar="on|off",
        help="on or off; with --inbox, `default` removes the inbox's own value",
    )
    flag_set.add_argument(
        "--inbox",
        type=_positive_int,
        metavar="ID",
        help="only for this Chatwoot inbox (wins over the global value)",
    )
    rollout = commands.add_parser(
        "rollout",
        help="how many conversations take the buffered path (the rest are answered at once)",
        description="A stable hash of each conversation picks its path, so a conversation keeps "
        "it while the percentage stays; raising the percentage only moves conversations onto "
        "the buffered path. Acts on DATABASE_URL; running processes follow within 5 s.",
    )
    rollout_actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    rollout_actions.add_parser("show", help="the percentage and the canaries")
    rollout_set = rollout_actions.add_parser("set", help="the percentage on the buffered path")
    rollout_set.add_argument("percent", type=_percent, metavar="PERCENT", help="0 to 100")
    shadow = rollout_actions.add_parser(
        "shadow",
        help="shadow mode: the buffered path asks the model and records, but sends nothing",
    )
    shadow.add_argument("value", choices=["on", "off"], metavar="on|off")
    for verb, text in [
        ("allow", "always put an inbox's or a contact's conversations on the buffered path"),
        ("disallow", "remove a canary"),
    ]:
        canary = rollout_actions.add_parser(verb, help=text)
        canary.add_argument("canary", type=_canary, metavar="inbox:ID|contact:ID")
    for verb, text in [
        (
            "pause",
            "kill switch: every process stops answering within 5 s; messages are still stored",
        ),
        (
            "resume",
            "start answering again: fresh bursts are answered, those older than "
            "PAUSE_STALE_AFTER_MS go to a human",
        ),
    ]:
        switch = commands.add_parser(verb, help=text, description=text)
        switch.add_argument(
            "--by", metavar="WHO", help="who does it, for the record (default: user@host)"
        )
    conversation = commands.add_parser(
        "conversation",
        help="one conversation's bot state: show it, resume the bot, or turn it off",
        description="Acts on the database named by DATABASE_URL. The ids are Chatwoot's: the "
        "account id and the conversation's number as the dashboard shows it.",
    )
    conversation_actions = conversation.add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    for verb, text in [
        ("show", "whether the bot answers there: active, paused (until), handed off, off"),
        ("resume", "let the bot answer again (ends a hand-off, a human's pause or an off)"),
        ("off", "keep the bot out of the conversation until `resume`"),
    ]:
        sub = conversation_actions.add_parser(verb, help=text, description=text)
        sub.add_argument("account_id", type=_conversation_account, metavar="ACCOUNT_ID")
        sub.add_argument("conversation_id", type=_conversation_id, metavar="CONVERSATION_ID")
        if verb == "off":
            sub.add_argument(
                "--reason", default="turned off by an operator", help="shown by `show`"
            )
    purge = commands.add_parser(
        "purge",
        help="delete finished buffers, their messages and replies, older than a cutoff",
        description="Deletes completed, superseded, cancelled and failed buffers last changed "
        "before the cutoff, with their messages, jobs and replies, 1000 per transaction. "
        "Active, closed and processing buffers are never touched.",
    )
    purge.add_argument(
        "--older-than",
        type=_age,
        metavar="AGE",
        help="e.g. 30d or 12h (default: DATA_RETENTION_DAYS days)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    doctor = commands.add_parser(
        "doctor",
        help="check the database, Chatwoot token, model key and webhook secret (exit 1 on a FAIL)",
        description="One cheap call per check, one line each; never prints a secret.",
    )
    doctor.add_argument(
        "--account",
        type=_account_id,
        metavar="ID",
        help="the Chatwoot account to try the token on (default: CHATWOOT_ACCOUNT_ID, else the "
        "account of the newest stored conversation)",
    )
    commands.add_parser(
        "status",
        help="open, due and failed buffers, the oldest due one's wait, workers holding leases",
    )
    demo = commands.add_parser(
        "demo", help="a burst of messages turning into one reply, against built-in simulators"
    )
    demo.add_argument(
        "--window-ms",
        type=_positive_ms,
        default=3000,
        help="quiet period before the reply, in milliseconds (default 3000)",
    )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chatbuffer")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "unknown (not installed)"


def _account_id(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a Chatwoot account id: {value!r}")
    return int(value)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, not {port}")
    return port


def _port_or_off(value: str) -> int:
    return 0 if value.strip() == "0" else _port(value)


def _positive_ms(value: str) -> int:
    try:
        ms = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {value!r}") from None
    if not 100 <= ms <= 600_000:
        raise argparse.ArgumentTypeError("must be between 100 and 600000 milliseconds")
    return ms


def _buffer_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a buffer id: {value!r}") from None


def _conversation_account(value: str) -> int:
    return _chatwoot_id(value, "ACCOUNT_ID")


def _conversation_id(value: str) -> int:
    return _chatwoot_id(value, "CONVERSATION_ID")


def _chatwoot_id(value: str, what: str) -> int:
    from chatbuffer import conversation_tool

    try:
        return conversation_tool.parse_id(value, what)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, not {value!r}")
    return int(value)


def _percent(value: str) -> str:
    from chatbuffer.domain import control

    try:
        return control.percent_value(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _canary(value: str) -> str:
    from chatbuffer.domain import control

    try:
        return control.canary_name(value.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_AGE = re.compile(r"([0-9]{1,6})([dh])")


def _age(value: str) -> timedelta:
    found = _AGE.fullmatch(value.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"must be a number of days or hours, like 30d or 12h, not {value!r}"
        )
    number, unit = int(found[1]), found[2]
    age = timedelta(days=number) if unit == "d" else timedelta(hours=number)
    if not timedelta(hours=1) <= age <= timedelta(days=36_500):
        raise argparse.ArgumentTypeError(f"must be between 1h and 36500d, not {value!r}")
    return age


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ChatbufferError as exc:
        print(f"chatbuffer: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from chatbuffer import demo

        return demo.run(window_ms=args.window_ms)

    if args.command == "prompt" and args.action == "template":
        from chatbuffer.prompting.template import shipped_source

        print(shipped_source(), end="")
        return 0

    settings = load_settings()
    if args.command == "prompt":
        return _prompt(settings, args)
    if args.command == "buffers" and args.action == "trace":
        from chatbuffer import trace_tool

        asyncio.run(_preflight(settings))
        print(asyncio.run(trace_tool.show(settings, args.buffer_id)))
        return 0
    if args.command == "buffers":
        from chatbuffer import admin_client

        token = settings.admin_token
        if token is None:
            raise ConfigurationError("ADMIN_TOKEN is not set; the buffers command needs it")
        client = admin_client.AdminClient(args.url, token.get_secret_value())
        if args.action == "list":
            print(admin_client.format_table(client.list_buffers(args.status, args.limit)))
        elif args.action == "show":
            print(admin_client.format_buffer(client.show(args.buffer_id)))
        else:
            summary = client.replay(args.buffer_id)
            print(f"chatbuffer: buffer {summary['buffer_id']} is scheduled to be answered again")
        return 0
    if args.command in {"flags", "rollout"}:
        return _controls(settings, args)
    if args.command in {"pause", "resume"}:
        return _pause(settings, args)
    if args.command == "conversation":
        return _conversation(settings, args)
    if args.command == "purge":
        return _purge(settings, args.older_than or settings.retention, dry_run=args.dry_run)
    if args.command == "doctor":
        return _doctor(settings, args.account)
    if args.command == "status":
        return _status(settings)
    role: Role = args.command
    settings.require_for(role)

    from chatbuffer.observability import logging as log_setup

    log_setup.configure(settings.log_level, settings.log_format)
    for warning in settings.deprecations:
        logging.getLogger("chatbuffer.settings").warning("%s", warning)
    if role == "migrate":
        revision = _migrate(settings, to=args.to)
        print(f"chatbuffer: database schema is at revision {revision or 'base (empty)'}")
        return 0
    prompt_files = None
    if role in {"serve", "worker"}:
        from chatbuffer.app import check_transcription, load_prompt_files

        # A template or instructions file that cannot be used, or a transcriber that cannot run
        # here, stops start-up with one line, before the first customer's message would find out.
        prompt_files = load_prompt_files(settings)
        check_transcription(settings)
    if role == "serve" and settings.is_sqlite:
        _migrate(settings)
    asyncio.run(_preflight(settings))
    if role == "worker":
        _event_loop_runner()(
            _worker(settings, prompt_files, host=args.metrics_host, port=args.metrics_port)
        )
        return 0
    _serve_http(
        settings,
        host=args.host,
        port=args.port,
        with_worker=role == "serve",
        prompt_files=prompt_files,
    )
    return 0


def _prompt(settings: Settings, args: argparse.Namespace) -> int:
    from chatbuffer import prompt_tool
    from chatbuffer.observability import logging as log_setup

    # The worker's code runs here: it needs what a worker needs. Logs go to stderr, so stdout
    # holds only the answer.
    settings.require_for("worker")
    log_setup.configure("WARNING", settings.log_format)
    asyncio.run(_preflight(settings))
    if args.action == "show":
        print(
            asyncio.run(prompt_tool.show(settings, args.buffer_id, short_images=args.short_images))
        )
        return 0
    trials, failed = asyncio.run(
        prompt_tool.try_instructions(settings, last=args.last, instructions=args.instructions)
    )
    print(prompt_tool.side_by_side(trials), end="")
    return 1 if failed else 0


def _migrate(settings: Settings, to: str | None = None) -> str | None:
    from chatbuffer.storage import database

    try:
        return database.migrate(settings.database_url, to)
    except ChatbufferError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"cannot migrate DATABASE_URL: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


async def _preflight(settings: Settings) -> None:
    """Refuse to start on an unreachable or unmigrated database, with one clear line."""
    from chatbuffer.storage import database

    engine = database.create_engine(settings.database_url, pool_size=1)
    try:
        await database.check_schema(engine, settings.database_url)
    except ChatbufferError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"cannot use DATABASE_URL: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    finally:
        await engine.dispose()


def _controls(settings: Settings, args: argparse.Namespace) -> int:
    from chatbuffer import control_tool
    from chatbuffer.domain import control
    from chatbuffer.domain.control import ROLLOUT_PERCENT

    asyncio.run(_preflight(settings))
    if args.command == "flags":
        if args.action == "set":
            flag = Flag(args.name)
            if args.value == "default":
                if args.inbox is None:
                    raise ConfigurationError(
                        "`default` needs --inbox: the global value is on or off"
                    )
                asyncio.run(control_tool.clear_inbox_flag(settings, flag, args.inbox))
            else:
                asyncio.run(control_tool.set_flag(settings, flag, args.value == "on", args.inbox))
        print(control_tool.flags_table(asyncio.run(control_tool.read(settings))))
        return 0
    if args.action == "set":
        asyncio.run(control_tool.set_values(settings, {ROLLOUT_PERCENT: args.percent}))
    elif args.action == "shadow":
        value = "on" if args.value == "on" else None
        asyncio.run(control_tool.set_values(settings, {control.ROLLOUT_SHADOW: value}))
    elif args.action in {"allow", "disallow"}:
        value = "on" if args.action == "allow" else None
        asyncio.run(control_tool.set_values(settings, {args.canary: value}))
    stored = asyncio.run(control_tool.read(settings))
    print(control_tool.rollout_text(control.parse(stored.flags, stored.values)))
    return 0


def _pause(settings: Settings, args: argparse.Namespace) -> int:
    from chatbuffer import control_tool
    from chatbuffer.clock import SystemClock
    from chatbuffer.domain import control

    asyncio.run(_preflight(settings))
    by = (args.by or _operator()).strip()[:200] or _operator()
    now = SystemClock().now()
    values = (
        control.pause_values(by, now) if args.command == "pause" else control.resume_values(by, now)
    )
    asyncio.run(control_tool.set_values(settings, values))
    stored = asyncio.run(control_tool.read(settings))
    print(control_tool.pause_text(control.parse(stored.flags, stored.values)))
    print(
        "chatbuffer: every running process follows within 5 s"
        + (
            "; messages are still stored, nothing is answered or sent until `chatbuffer resume`"
            if args.command == "pause"
            else ""
        )
    )
    return 0


def _operator() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _conversation(settings: Settings, args: argparse.Namespace) -> int:
    from chatbuffer import conversation_tool
    from chatbuffer.domain.model import ConversationKey

    asyncio.run(_preflight(settings))
    key = ConversationKey(args.account_id, args.conversation_id)
    if args.action == "show":
        print(asyncio.run(conversation_tool.show(settings, key)))
    elif args.action == "resume":
        changed, shown = asyncio.run(conversation_tool.resume(settings, key))
        if not changed:
            print("chatbuffer: the bot was already active there; nothing changed")
        print(shown)
    else:
        print(asyncio.run(conversation_tool.turn_off(settings, key, args.reason)))
    return 0


def _purge(settings: Settings, older_than: timedelta | None, *, dry_run: bool) -> int:
    from chatbuffer.clock import SystemClock
    from chatbuffer.storage import database, retention

    if older_than is None:
        raise ConfigurationError(
            "purge needs an age: pass --older-than (e.g. 30d) or set DATA_RETENTION_DAYS"
        )
    asyncio.run(_preflight(settings))
    cutoff = SystemClock().now() - older_than

    async def run() -> retention.PurgeReport:
        engine = database.create_engine(settings.database_url, pool_size=1)
        try:
            return await retention.purge(engine, cutoff, dry_run=dry_run)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    verb = "would delete" if dry_run else "deleted"
    print(
        f"chatbuffer: {verb} {report.buffers} finished buffers last changed before "
        f"{cutoff.isoformat(timespec='seconds')}, with {report.messages} messages, "
        f"{report.jobs} jobs and {report.replies} bot replies"
        + (" (dry run: nothing was deleted)" if dry_run else "")
    )
    print(
        f"chatbuffer: {verb} {report.history} human agents' or fetched messages and "
        f"{report.summaries} conversation summaries from before then"
    )
    return 0


def _doctor(settings: Settings, account: int | None) -> int:
    from chatbuffer import doctor

    checks = asyncio.run(doctor.run(settings, account=account))
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


def _status(settings: Settings) -> int:
    from chatbuffer import doctor
    from chatbuffer.clock import SystemClock

    asyncio.run(_preflight(settings))
    print(doctor.status_text(asyncio.run(doctor.queue_status(settings, SystemClock().now()))))
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "no detail"


def _serve_http(
    settings: Settings,
    *,
    host: str,
    port: int,
    with_worker: bool,
    prompt_files: PromptFiles | None,
) -> None:
    import uvicorn

    from chatbuffer.app import Runtime

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM:
                # SIGTERM asks for a graceful stop, and the lifespan gives one: exit 0 (as
                # `worker` does) instead of uvicorn re-raising the signal at the end.
                self.should_exit = True
                return
            super().handle_exit(sig, frame)

    runtime = Runtime(settings, prompt_files=prompt_files)
    config = uvicorn.Config(
        runtime.asgi(with_worker=with_worker),
        host=host,
        port=port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    _Server(config).run()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop when installed, as ``serve`` runs under uvicorn: each of the worker's database
    calls and Chatwoot requests waits on a socket, which costs about a third less CPU there
    (measured: 150 against 230 µs of client CPU a call); asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with uvicorn[standard]
        return asyncio.run
    return uvloop.run


async def _worker(
    settings: Settings, prompt_files: PromptFiles | None, *, host: str, port: int
) -> None:
    from chatbuffer.app import Runtime
    from chatbuffer.observability.server import metrics_listener

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(settings, prompt_files=prompt_files)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(runtime.opened())
        if port:
            await stack.enter_async_context(metrics_listener(runtime.metrics_page, host, port))
        await stack.enter_async_context(runtime.worker_running())
        await stop.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
