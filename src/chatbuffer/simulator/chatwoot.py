"""An in-memory Chatwoot that answers the few REST calls an agent bot makes.

It behaves like Chatwoot v4.16 for ``POST …/messages``, ``POST …/toggle_typing_status``,
``POST …/toggle_status`` and ``GET`` of a conversation (docs/chatwoot.md §3), records every request,
can check each one against a validator (e.g. the swagger-backed one in ``tests/support``), injects
faults for reliability tests and, like the real server, echoes each created message back to the
bot's webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx2
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatbuffer.simulator import payloads

Validator = Callable[["RecordedRequest"], list[str]]
_Handler = Callable[["RecordedRequest", int, int], Awaitable[Response]]

_CONVERSATION_PATH = r"/api/v1/accounts/(?P<account>\d+)/conversations/(?P<conversation>\d+)"
_FIRST_MESSAGE_ID = 10_000
_FILES_PREFIX = "/rails/active_storage/"
_WEBHOOK_TIMEOUT_S = 5.0  # Chatwoot's default WEBHOOK_TIMEOUT
_STATUSES = frozenset({"open", "resolved", "pending", "snoozed"})


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it. Header names are lower-cased."""

    index: int  # arrival order, starting at 0
    method: str
    path: str
    headers: dict[str, str]
    json: Any | None  # the parsed JSON body, None when there was no (valid) JSON body
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Violation:
    """A request that broke the API contract: validator problems or a body that is not JSON."""

    request: RecordedRequest
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """Outcome of one webhook POST to ``webhook_url``; ``error`` names the transport failure."""

    event: str
    message_id: int | None
    status_code: int | None
    error: str | None = None


@dataclass(slots=True)
class _Fault:
    path_suffix: str
    status: int | None  # None: only delay, then answer normally
    remaining: int
    retry_after: int | None
    delay_s: float


@dataclass(slots=True)
class _Conversation:
    status: str = "pending"
    messages: list[dict[str, Any]] = field(default_factory=list)
    typing: list[str] = field(default_factory=list)


class ChatwootSimulator:
    """Chatwoot's agent-bot API surface, in memory. Serve ``.app`` with any ASGI server."""

    def __init__(
        self,
        *,
        api_token: str,
        validator: Validator | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        now: Callable[[], float] = time.time,
        bot_id: int = 1,
        bot_name: str = "Chatbuffer",
        inbox_id: int = 4,
        user_token: bool = False,
    ) -> None:
        """By default ``api_token`` is an agent bot's, which reaches only the bot endpoints;
        ``user_token`` makes it a user's, which may also list a conversation's messages."""
        self._api_token = api_token
        self._user_token = user_token
        self._validator = validator
        self._webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._now = now
        self._bot_id = bot_id
        self._bot_name = bot_name
        self._inbox_id = inbox_id
        self._arrivals = itertools.count()
        self._message_ids = itertools.count(_FIRST_MESSAGE_ID)
        self._conversations: dict[tuple[int, int], _Conversation] = {}
        self._faults: list[_Fault] = []
        self._files: dict[str, tuple[str, bytes, str]] = {}
        self._webhook_client: httpx2.AsyncClient | None = None
        self.requests: list[RecordedRequest] = []
        self.violations: list[Violation] = []
        self.deliveries: list[WebhookDelivery] = []
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("POST", re.compile(_CONVERSATION_PATH + "/messages"), self._create_message),
            ("POST", re.compile(_CONVERSATION_PATH + "/toggle_typing_status"), self._typing),
            ("POST", re.compile(_CONVERSATION_PATH + "/toggle_status"), self._toggle_status),
            ("GET", re.compile(_CONVERSATION_PATH), self._show),
            ("GET", re.compile(_CONVERSATION_PATH + "/messages"), self._list_messages),
        ]
        # One catch-all route, so requests to unknown paths are recorded and validated too.
        self.app = Starlette(
            lifespan=self._lifespan,
            routes=[
                Route(
                    "/{path:path}",
                    self._dispatch,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                )
            ],
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the webhook client (the served app's shutdown does it too)."""
        if self._webhook_client is not None:
            await self._webhook_client.aclose()
            self._webhook_client = None

    # -- test controls ---------------------------------------------------------------------

    @property
    def webhook_url(self) -> str | None:
        return self._webhook_url

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        """Point deliveries elsewhere, e.g. at another API replica."""
        self._webhook_url = url

    def fail_next(
        self,
        path_suffix: str,
        *,
        status: int,
        times: int = 1,
        retry_after: int | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests whose path ends with ``path_suffix`` with
        ``status`` (after ``delay_s``), ahead of authentication and without touching state.
        The requests are still recorded and validated."""
        self._faults.append(_Fault(path_suffix, status, times, retry_after, delay_s))

    def delay_next(self, path_suffix: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` matching requests for ``seconds``, then process them normally;
        a client that gives up meanwhile still causes the side effect, as with a slow Chatwoot."""
        self._faults.append(_Fault(path_suffix, None, times, None, seconds))

    def set_status(self, account_id: int, conversation_id: int, status: str) -> None:
        """Change a conversation's status the way an agent in the dashboard would."""
        self._conversation(account_id, conversation_id).status = status

    # -- queries -----------------------------------------------------------------------------

    def add_message(
        self,
        account_id: int,
        conversation_id: int,
        *,
        message_id: int,
        content: str,
        created_at: datetime,
        sender: Literal["contact", "user", "agent_bot", "activity"] = "contact",
        sender_name: str = "Ana",
        private: bool = False,
    ) -> dict[str, Any]:
        """A message the conversation already had (before chatbuffer, say), in the REST
        encoding: the contact's (incoming), a human agent's (``user``), a bot's, or an activity
        line; ``private`` makes it a note. Listed by ``GET …/messages`` in id order."""
        kinds = {"contact": 0, "user": 1, "agent_bot": 1, "activity": 2}
        sender_types = {"contact": "Contact", "user": "User", "agent_bot": "AgentBot"}
        unix = int(created_at.timestamp())
        message: dict[str, Any] = {
            "id": message_id,
            "content": content,
            "account_id": account_id,
            "inbox_id": self._inbox_id,
            "conversation_id": conversation_id,
            "message_type": kinds[sender],
            "content_type": "text",
            "status": "sent",
            "content_attributes": {},
            "created_at": unix,
            "updated_at": unix,
            "private": private,
            "source_id": None,
            "sender_type": sender_types.get(sender),
            "sender_id": 77 if sender == "contact" else 3,
            "external_source_ids": {},
            "additional_attributes": {},
            "processed_message_content": content,
            "sentiment": {},
            "conversation": {"assignee_id": None, "unread_count": 0, "last_activity_at": unix},
        }
        if sender in sender_types:
            message["sender"] = {
                "id": message["sender_id"],
                "name": sender_name,
                "type": {"contact": "contact", "user": "user", "agent_bot": "agent_bot"}[sender],
            }
        conversation = self._conversation(account_id, conversation_id)
        conversation.messages.append(message)
        conversation.messages.sort(key=lambda m: int(m["id"]))
        return message

    def replies(self, account_id: int, conversation_id: int) -> list[dict[str, Any]]:
        """Public outgoing messages the bot created through the API, oldest first."""
        return [
            m
            for m in self._conversation(account_id, conversation_id).messages
            if m["message_type"] == 1 and not m["private"] and m["sender_type"] == "AgentBot"
        ]

    def private_notes(self, account_id: int, conversation_id: int) -> list[dict[str, Any]]:
        return [m for m in self._conversation(account_id, conversation_id).messages if m["private"]]

    def typing_events(self, account_id: int, conversation_id: int) -> list[str]:
        return list(self._conversation(account_id, conversation_id).typing)

    def status(self, account_id: int, conversation_id: int) -> str:
        return self._conversation(account_id, conversation_id).status

    # -- webhooks ----------------------------------------------------------------------------

    async def send_webhook(self, payload: dict[str, Any]) -> WebhookDelivery:
        """POST ``payload`` to ``webhook_url`` the way Chatwoot delivers it (signed when a secret
        is configured) and record the outcome in ``deliveries``."""
        if self._webhook_url is None:
            raise RuntimeError("ChatwootSimulator was built without webhook_url")
        # Ruby's to_json is compact; keep the same bytes-on-the-wire style.
        body = json.dumps(payload, separators=(",", ":")).encode()
        if self._webhook_secret is None:
            headers = {
                "Content-Type": "application/json",
                "X-Chatwoot-Delivery": str(uuid.uuid4()),
            }
        else:
            headers = payloads.sign(self._webhook_secret, body, int(self._now()))
        headers["Accept"] = "application/json"
        event = str(payload.get("event", ""))
        message_id = payload.get("id") if event.startswith("message_") else None
        if self._webhook_client is None:
            # One client for every delivery: building one costs ~80 ms of CPU (TLS set-up). No
            # kept-alive connections, like Chatwoot's per-delivery requests, so a receiver that
            # was killed and restarted is reached afresh. trust_env=False: a proxy from the
            # environment must never see loopback test traffic.
            self._webhook_client = httpx2.AsyncClient(
                timeout=_WEBHOOK_TIMEOUT_S,
                trust_env=False,
                limits=httpx2.Limits(max_keepalive_connections=0),
            )
        try:
            response = await self._webhook_client.post(
                self._webhook_url, content=body, headers=headers
            )
        except httpx2.HTTPError as exc:
            delivery = WebhookDelivery(event, message_id, None, type(exc).__name__)
        else:
            delivery = WebhookDelivery(event, message_id, response.status_code)
        self.deliveries.append(delivery)
        return delivery

    # -- request pipeline --------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        raw = await request.body()
        parsed: Any | None = None
        malformed = False
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                malformed = True
        recorded = RecordedRequest(
            index=next(self._arrivals),
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            json=parsed,
            query=dict(request.query_params),
        )
        self.requests.append(recorded)
        if recorded.path.startswith(_FILES_PREFIX):
            # File downloads are signed ActiveStorage URLs, not API calls: no token, no spec.
            return self._serve_file(recorded)

        problems = ["request body is not valid JSON"] if malformed else []
        if self._validator is not None:
            problems += self._validator(recorded)
        if problems:
            # Recorded even when a fault or a 401 answers, so a malformed retry or an
            # unauthenticated call cannot slip past a test that asserts no violations.
            self.violations.append(Violation(recorded, tuple(problems)))

        fault = self._take_fault(recorded.path)
        if fault is not None:
            if fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                headers = (
                    {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                )
                return JSONResponse(
                    {"error": "simulated failure"}, status_code=fault.status, headers=headers
                )
        if recorded.headers.get("api_access_token") != self._api_token:
            return JSONResponse({"error": "Invalid Access Token"}, status_code=401)
        if problems:
            return JSONResponse({"errors": problems}, status_code=400)

        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(recorded.path)
            if match and method == recorded.method:
                return await handler(recorded, int(match["account"]), int(match["conversation"]))
        return JSONResponse({"error": "Resource could not be found"}, status_code=404)

    def add_file(self, name: str, content: bytes, content_type: str = "audio/ogg") -> str:
        """Store an attachment; return its ``data_url`` path (prefix it with the base URL).

        Like Chatwoot's, the URL answers with a redirect to where the bytes are stored.
        """
        token = uuid.uuid4().hex
        self._files[token] = (name, content, content_type)
        return f"{_FILES_PREFIX}blobs/redirect/{token}/{name}"

    def _serve_file(self, request: RecordedRequest) -> Response:
        parts = request.path.removeprefix(_FILES_PREFIX).split("/")
        if request.method != "GET" or len(parts) != 4 or parts[2] not in self._files:
            return JSONResponse({"error": "Resource could not be found"}, status_code=404)
        kind, _, token, name = parts
        if kind == "blobs":
            return Response(
                status_code=302, headers={"Location": f"{_FILES_PREFIX}disk/x/{token}/{name}"}
            )
        _, content, content_type = self._files[token]
        return Response(content, media_type=content_type)

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and path.endswith(fault.path_suffix):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _conversation(self, account_id: int, conversation_id: int) -> _Conversation:
        # Every conversation exists and starts pending, like a fresh conversation in a
        # bot-connected inbox.
        return self._conversations.setdefault((account_id, conversation_id), _Conversation())

    # -- endpoints ---------------------------------------------------------------------------

    async def _create_message(
        self, request: RecordedRequest, account_id: int, conversation_id: int
    ) -> Response:
        body = request.json
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            return JSONResponse({"errors": ["content must be a string"]}, status_code=400)
        if body.get("message_type", "outgoing") != "outgoing":
            # Chatwoot's MessageBuilder allows incoming messages only on API-channel inboxes.
            return JSONResponse(
                {"error": "Incoming messages are only allowed in Api inboxes"}, status_code=422
            )
        conversation = self._conversation(account_id, conversation_id)
        message = self._rest_message(account_id, conversation_id, body)
        conversation.messages.append(message)
        background = None
        if self._webhook_url is not None:
            background = BackgroundTask(
                self._echo_created, account_id, conversation_id, conversation.status, message
            )
        return JSONResponse(message, background=background)

    async def _typing(
        self, request: RecordedRequest, account_id: int, conversation_id: int
    ) -> Response:
        body = request.json if isinstance(request.json, dict) else {}
        typing_status = body.get("typing_status")
        # Chatwoot ignores values other than on/off but still answers 200.
        if typing_status in ("on", "off"):
            self._conversation(account_id, conversation_id).typing.append(typing_status)
        return Response(status_code=200)

    async def _toggle_status(
        self, request: RecordedRequest, account_id: int, conversation_id: int
    ) -> Response:
        body = request.json if isinstance(request.json, dict) else {}
        conversation = self._conversation(account_id, conversation_id)
        requested = body.get("status")
        if requested in _STATUSES:
            conversation.status = str(requested)
        elif requested is None:
            # Without a status Chatwoot toggles: open <-> resolved, anything else -> open.
            conversation.status = "resolved" if conversation.status == "open" else "open"
        else:
            return JSONResponse({"error": f"invalid status {requested!r}"}, status_code=422)
        snoozed_until = body.get("snoozed_until") if conversation.status == "snoozed" else None
        return JSONResponse(
            {
                "meta": {},
                "payload": {
                    "success": True,
                    "conversation_id": conversation_id,
                    "current_status": conversation.status,
                    "snoozed_until": snoozed_until,
                },
            }
        )

    async def _list_messages(
        self, request: RecordedRequest, account_id: int, conversation_id: int
    ) -> Response:
        """``GET …/messages``: the latest 20, up to 100 after ``?after=<id>`` or the 20 before
        ``?before=<id>``, oldest first."""
        if not self._user_token:
            return JSONResponse(
                {"error": "Access to this endpoint is not authorized for bots"}, status_code=401
            )
        messages = self._conversation(account_id, conversation_id).messages
        after = request.query.get("after")
        before = request.query.get("before")
        if after is not None and after.lstrip("-").isdigit():
            listed = [m for m in messages if m["id"] > int(after)][:100]
        elif before is not None and before.lstrip("-").isdigit():
            listed = [m for m in messages if m["id"] < int(before)][-20:]
        else:
            listed = messages[-20:]
        return JSONResponse(
            {"meta": {"labels": [], "additional_attributes": {}}, "payload": listed}
        )

    async def _show(
        self, _request: RecordedRequest, account_id: int, conversation_id: int
    ) -> Response:
        conversation = self._conversation(account_id, conversation_id)
        now = int(self._now())
        last = [m for m in conversation.messages if not m["private"]][-1:]
        return JSONResponse(
            {
                "id": conversation_id,
                "account_id": account_id,
                "inbox_id": self._inbox_id,
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{account_id}/{conversation_id}")),
                "status": conversation.status,
                "messages": last,
                "meta": {
                    "sender": payloads.contact_push(
                        account_id=account_id,
                        conversation_id=conversation_id,
                        inbox_id=self._inbox_id,
                    ),
                    "channel": "Channel::Whatsapp",
                    "hmac_verified": False,
                },
                "labels": [],
                "additional_attributes": {},
                "custom_attributes": {},
                "can_reply": True,
                "muted": False,
                "snoozed_until": None,
                "unread_count": 0,
                "first_reply_created_at": None,
                "priority": None,
                "waiting_since": None,
                "agent_last_seen_at": 0,
                "assignee_last_seen_at": 0,
                "contact_last_seen_at": 0,
                "last_activity_at": now,
                "timestamp": now,
                "created_at": now,
                "updated_at": now,
            }
        )

    def _rest_message(
        self, account_id: int, conversation_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        created_at = int(self._now())
        content: str = body["content"]
        message: dict[str, Any] = {
            "id": next(self._message_ids),
            "content": content,
            "account_id": account_id,
            "inbox_id": self._inbox_id,
            "conversation_id": conversation_id,
            "message_type": 1,
            "content_type": body.get("content_type", "text"),
            "status": "sent",
            "content_attributes": body.get("content_attributes") or {},
            "created_at": created_at,
            "updated_at": created_at,
            "private": bool(body.get("private", False)),
            "source_id": None,
            "sender_type": "AgentBot",
            "sender_id": self._bot_id,
            "external_source_ids": {},
            "additional_attributes": {},
            "processed_message_content": content,
            "sentiment": {},
            "conversation": {
                "assignee_id": None,
                "unread_count": 0,
                "last_activity_at": created_at,
            },
            "sender": {
                "id": self._bot_id,
                "name": self._bot_name,
                "avatar_url": "",
                "type": "agent_bot",
            },
        }
        # Chatwoot echoes echo_id in the REST answer only, never in webhooks.
        if "echo_id" in body:
            message["echo_id"] = body["echo_id"]
        return message

    async def _echo_created(
        self, account_id: int, conversation_id: int, status: str, message: dict[str, Any]
    ) -> None:
        payload = payloads.bot_reply(
            account_id=account_id,
            conversation_id=conversation_id,
            message_id=message["id"],
            content=message["content"],
            created_at=datetime.fromtimestamp(message["created_at"], UTC),
            bot_id=self._bot_id,
            bot_name=self._bot_name,
            content_attributes=message["content_attributes"],
            private=message["private"],
            status=status,
            inbox_id=self._inbox_id,
        )
        await self.send_webhook(payload)
