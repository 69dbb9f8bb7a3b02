"""``BurstWebhookClient``: a closed burst POSTed to ``BURST_WEBHOOK_URL`` as one signed event.

The signature follows the scheme Chatwoot itself uses for its webhooks, so one verifier serves
both: ``X-Chatbuffer-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`` with the
secret, and ``X-Chatbuffer-Timestamp`` (Unix seconds) so a consumer can refuse old replays.
``X-Chatbuffer-Delivery`` is the buffer's id: a retry of the same burst carries the same one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import httpx2

from chatbuffer.ai.openai_model import parse_decision
from chatbuffer.domain.aggregation import PromptInputs
from chatbuffer.domain.burst_event import burst_event
from chatbuffer.domain.model import ConversationKey, ModelDecision
from chatbuffer.domain.ports import Clock
from chatbuffer.errors import InvalidModelAnswer, ModelError


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Chatbuffer-Signature`` value of ``body`` sent at ``timestamp``."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class BurstWebhookClient:
    """Implements :class:`chatbuffer.domain.ports.BurstConsumer`.

    The secret signs every request and never appears in errors; the answer's text never
    appears in errors either (it may quote the customer).
    """

    def __init__(
        self,
        *,
        url: str,
        secret: str,
        clock: Clock,
        timeout_s: float = 30.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._secret = secret
        self._clock = clock
        self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(timeout_s), transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def decide(
        self, key: ConversationKey, buffer_id: uuid.UUID, inputs: PromptInputs
    ) -> ModelDecision:
        body = json.dumps(burst_event(key, buffer_id, inputs), separators=(",", ":")).encode()
        timestamp = str(int(self._clock.now().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Chatbuffer-Delivery": str(buffer_id),
            "X-Chatbuffer-Timestamp": timestamp,
            "X-Chatbuffer-Signature": signature(self._secret, timestamp, body),
        }
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx2.TimeoutException:
            raise ModelError("the burst webhook did not answer in time") from None
        except httpx2.HTTPError as exc:
            reason = type(exc).__name__
            raise ModelError(f"the burst webhook could not be reached ({reason})") from None
        if response.status_code >= 300:
            raise ModelError(f"the burst webhook answered HTTP {response.status_code}")
        try:
            return parse_decision(response.text)
        except InvalidModelAnswer as exc:
            raise ModelError(f"the burst webhook's answer is unusable: {exc.problem}") from None
