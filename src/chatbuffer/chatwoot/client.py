"""``ChatwootClient``: typed async calls to Chatwoot, errors translated to ``ChatwootError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2

from chatbuffer.domain import marker as markers
from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.retry import parse_retry_after, retryable_status
from chatbuffer.errors import ChatwootError


def conversation_path(key: ConversationKey, suffix: str = "") -> str:
    """A conversation's API path (its display id, as every API path takes it)."""
    return f"/api/v1/accounts/{key.account_id}/conversations/{key.conversation_id}{suffix}"


class ChatwootClient:
    """Implements :class:`chatbuffer.domain.ports.ChatwootAPI`.

    The token is sent only in the ``api_access_token`` header and never appears in errors.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_token: str,
        timeout_s: float = 10.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = http_client(base_url, api_token, timeout_s, transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _path(key: ConversationKey, suffix: str = "") -> str:
        return conversation_path(key, suffix)

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        await self._post(
            self._path(key, "/toggle_typing_status"),
            {"typing_status": "on" if on else "off", "is_private": False},
        )

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        body: dict[str, Any] = {
            "content": content,
            "message_type": "outgoing",
            "private": private,
            "content_type": "text",
        }
        if content_attributes:
            body["content_attributes"] = dict(content_attributes)
        answer = await self._post(self._path(key, "/messages"), body)
        message_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(message_id, int):
            raise ChatwootError("Chatwoot accepted the message but returned no message id")
        return message_id

    async def set_status(self, key: ConversationKey, status: str) -> None:
        await self._post(self._path(key, "/toggle_status"), {"status": status})

    async def find_marked(
        self, key: ConversationKey, marker: markers.Marker, *, after_message_id: int | None
    ) -> int | None:
        try:
            params = {} if after_message_id is None else {"after": after_message_id}
            answer = await self._request("GET", self._path(key, "/messages"), params=params)
            found = answer.get("payload") if isinstance(answer, dict) else None
        except ChatwootError as exc:
            if exc.status not in (401, 403):
                raise
            # Agent-bot tokens may not list messages (docs/chatwoot.md §3); the conversation
            # itself still shows its last message, which is where a just-posted reply sits.
            answer = await self._request("GET", self._path(key))
            found = answer.get("messages") if isinstance(answer, dict) else None
        for message in found if isinstance(found, list) else []:
            if not isinstance(message, dict) or not isinstance(message.get("id"), int):
                continue
            attributes = message.get("content_attributes")
            seen = markers.read(
                attributes if isinstance(attributes, dict) else None,
                private=bool(message.get("private")),
            )
            if seen == marker:
                message_id: int = message["id"]
                return message_id
        return None

    async def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self._request("POST", path, json=body)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        return await call(self._client, method, path, json=json, params=params)


def http_client(
    base_url: str,
    api_token: str,
    timeout_s: float,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client for Chatwoot's API with ``api_token`` (only ever in the header)."""
    return httpx2.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"api_access_token": api_token, "Accept": "application/json"},
        timeout=httpx2.Timeout(timeout_s),
        transport=transport,
    )


async def call(
    client: httpx2.AsyncClient,
    method: str,
    path: str,
    *,
    json: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Any:
    """One API call: the JSON answer (None for an empty one), or a ``ChatwootError`` that says
    which call failed and whether it is worth retrying, never the token."""
    try:
        response = await client.request(method, path, json=json, params=params)
    except httpx2.TimeoutException as exc:
        raise ChatwootError(f"Chatwoot did not answer {method} {path} in time") from exc
    except httpx2.HTTPError as exc:
        raise ChatwootError(
            f"could not reach Chatwoot for {method} {path}: {type(exc).__name__}"
        ) from exc
    if response.is_success:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None
    status = response.status_code
    raise ChatwootError(
        f"Chatwoot answered {status} to {method} {path}",
        retryable=retryable_status(status),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        status=status,
    )
