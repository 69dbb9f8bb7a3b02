"""``chatbuffer doctor`` and ``chatbuffer status``: is this installation able to answer, and how
is the queue doing.

Each check makes at most one cheap call, says ``ok`` or ``FAIL`` and why in one line, and never
shows a secret: a refused token is named by its setting, not its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
import openai
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.chatwoot.client import conversation_path, http_client
from chatbuffer.domain.model import ConversationKey
from chatbuffer.errors import ChatbufferError
from chatbuffer.settings import Settings
from chatbuffer.storage import database, status

#: Chatwoot generates a bot's secret as 24 characters; anything much shorter was cut off when
#: copied, or chosen by hand.
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 512
#: The cheap calls' own limit: a doctor that hangs is no help.
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


async def run(settings: Settings, *, account: int | None = None) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    wanted = account if account is not None else settings.chatwoot_account_id
    engine = database.create_engine(settings.database_url, pool_size=1)
    try:
        db_check, usable = await _database(engine, settings.database_url)
        checks = [db_check]
        target = await _chatwoot_target(engine, wanted) if usable else None
    finally:
        await engine.dispose()
    if target is None and wanted is not None:
        # No conversation seen yet: any id does, a good token gets 404 for an unknown one.
        target = ConversationKey(wanted, 1)
    checks.append(await _chatwoot(settings, target))
    checks.append(await _model(settings))
    checks.append(_webhook_secret(settings))
    return checks


async def _database(engine: AsyncEngine, url: str) -> tuple[Check, bool]:
    try:
        state = await database.check_schema(engine, url)
    except ChatbufferError as exc:
        return Check("database", False, f"reachable, but {exc}"), False
    except Exception as exc:
        problem = f"cannot connect: {type(exc).__name__}: {_first(exc)}"
        return Check("database", False, problem), False
    if state.at_head:
        detail = f"reachable, schema at {state.current} (this release's)"
    else:
        detail = (
            f"reachable, schema at {state.current}, a newer release's that this one "
            f"({state.head}) runs beside"
        )
    return Check("database", True, detail), True


async def _chatwoot_target(engine: AsyncEngine, account: int | None) -> ConversationKey | None:
    """The conversation to ask Chatwoot about: the newest one chatbuffer saw (of the account
    asked for), so the bot's token is tried on an account it serves."""
    try:
        return await status.latest_conversation(engine, account)
    except Exception:
        return None


async def _chatwoot(
    settings: Settings,
    target: ConversationKey | None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> Check:
    name = "chatwoot"
    if settings.chatwoot_base_url is None:
        return Check(name, False, "CHATWOOT_BASE_URL is not set")
    token = settings.chatwoot_api_token
    if token is None or not token.get_secret_value().strip():
        return Check(name, False, "CHATWOOT_API_TOKEN is not set")
    if target is None:
        return Check(
            name,
            False,
            "no account to try CHATWOOT_API_TOKEN on (an agent bot's token is only accepted "
            "for its own account): pass --account ID or set CHATWOOT_ACCOUNT_ID",
        )
    # An agent bot's token reaches only a few endpoints (not GET /api/v1/profile); showing a
    # conversation is one of them since about 4.12, and Chatwoot checks the token, then the
    # account, before it looks the conversation up: a good token gets the conversation or 404.
    # Its 401s say which check failed.
    client = http_client(
        settings.chatwoot_base_url,
        token.get_secret_value(),
        min(CHECK_TIMEOUT_S, settings.chatwoot_timeout_ms / 1000),
        transport,
    )
    account = target.account_id
    where = f"CHATWOOT_BASE_URL {settings.chatwoot_base_url}"
    try:
        response = await client.get(conversation_path(target))
    except httpx2.HTTPError as exc:
        return Check(name, False, f"cannot reach {where}: {type(exc).__name__}")
    finally:
        await client.aclose()
    status_code = response.status_code
    said = _chatwoot_error(response)
    accepted = f"{settings.chatwoot_base_url} accepts CHATWOOT_API_TOKEN for account {account}"
    if status_code in (200, 404):
        return Check(name, True, accepted)
    if status_code == 401 and "not authorized for bots" in said:
        # Token and account passed; this Chatwoot only keeps bots from this endpoint.
        return Check(name, True, f"{accepted} (it does not let bots show a conversation)")
    if status_code == 401 and "account" in said:
        return Check(
            name,
            False,
            f"CHATWOOT_API_TOKEN is valid but may not act in account {account} (401): the bot "
            "belongs to another account, or is connected to no inbox of this one",
        )
    if status_code == 401:
        return Check(
            name,
            False,
            f"Chatwoot refused CHATWOOT_API_TOKEN for account {account} (401): not a token it "
            "knows (mistyped, or reset since)",
        )
    if status_code == 403:
        return Check(
            name,
            False,
            f"Chatwoot refused CHATWOOT_API_TOKEN for account {account} (403): on Chatwoot "
            "Cloud, a plan without API access",
        )
    return Check(name, False, f"{where} answered {status_code} to GET {conversation_path(target)}")


def _chatwoot_error(response: httpx2.Response) -> str:
    """Chatwoot's reason for a refusal (``{"error": ...}``), lower case; "" when none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    reason = body.get("error") if isinstance(body, dict) else None
    return reason.lower() if isinstance(reason, str) else ""


async def _model(settings: Settings) -> Check:
    name = "model"
    key = settings.openai_api_key
    if key is None or not key.get_secret_value().strip():
        if settings.burst_webhook_url is not None:
            return Check(name, True, "not asked: bursts go to BURST_WEBHOOK_URL")
        return Check(name, False, "OPENAI_API_KEY is not set")
    client = openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=key.get_secret_value(),
        timeout=min(CHECK_TIMEOUT_S, settings.ai_processing_timeout_ms / 1000),
        max_retries=0,
    )
    where = f"OPENAI_BASE_URL {settings.openai_base_url}"
    try:
        listed = [model.id async for model in client.models.list()]
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            return Check(
                name, False, f"the model endpoint refused OPENAI_API_KEY ({exc.status_code})"
            )
        return Check(name, False, f"{where} answered {exc.status_code} to GET /models")
    except openai.APIError as exc:
        return Check(name, False, f"cannot reach {where}: {type(exc).__name__}")
    finally:
        await client.close()
    detail = f"{settings.openai_base_url} accepts OPENAI_API_KEY"
    if listed and settings.openai_model not in listed:
        # Not a failure: compatible endpoints and proxies often list only some of their models.
        detail += f"; it does not list OPENAI_MODEL {settings.openai_model!r}"
    return Check(name, True, detail)


def _webhook_secret(settings: Settings) -> Check:
    name = "webhook secret"
    secret = settings.chatwoot_webhook_secret
    value = secret.get_secret_value() if secret is not None else ""
    if not value:
        return Check(
            name,
            False,
            "CHATWOOT_WEBHOOK_SECRET is not set: anyone who finds the URL can post messages "
            "(set the agent bot's secret; Chatwoot signs since 4.13)",
        )
    if value != value.strip() or any(c.isspace() for c in value):
        return Check(name, False, "CHATWOOT_WEBHOOK_SECRET contains spaces (a copy-paste slip?)")
    if not MIN_SECRET_CHARS <= len(value) <= MAX_SECRET_CHARS:
        return Check(
            name,
            False,
            f"CHATWOOT_WEBHOOK_SECRET is {len(value)} characters; Chatwoot's are 24 "
            f"(expected {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS})",
        )
    return Check(name, True, f"set ({len(value)} characters)")


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no detail"


# -- chatbuffer status ---------------------------------------------------------------------


async def queue_status(settings: Settings, now: datetime) -> status.QueueStatus:
    engine = database.create_engine(settings.database_url, pool_size=1)
    try:
        return await status.read(engine, now)
    finally:
        await engine.dispose()


def status_text(queue: status.QueueStatus) -> str:
    oldest = "none due" if queue.oldest_due is None else _age(queue.oldest_due)
    lines = [
        f"open buffers (collecting messages or due): {queue.open}",
        f"due buffers (waiting for a worker): {queue.due}; oldest due for {oldest}",
        f"scheduled, not yet due: {queue.waiting - queue.due}",
        f"processing: {queue.processing}",
        f"failed: {queue.failed}" + (" (see `chatbuffer buffers list`)" if queue.failed else ""),
    ]
    if queue.workers:
        held = ", ".join(f"{owner} ({n})" for owner, n in sorted(queue.workers.items()))
        lines.append(f"workers holding a lease: {len(queue.workers)}: {held}")
    else:
        lines.append("workers holding a lease: none")
    if queue.expired_leases:
        lines.append(
            f"expired leases: {queue.expired_leases} (their worker stopped or stalls; "
            "another worker takes them over)"
        )
    lines.append(
        "(workers register nowhere: one is seen only while it holds a buffer's lease; idle "
        "workers are not shown)"
    )
    return "\n".join(lines)


def _age(age: timedelta) -> str:
    seconds = age.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
