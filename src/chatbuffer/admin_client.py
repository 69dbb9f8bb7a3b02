"""The ``chatbuffer buffers`` command's side of the admin API: plain HTTP with the token.

The command goes through a running api rather than the database, so the token guards every
state change whoever runs it, and it works the same against one process or many replicas.
"""

from __future__ import annotations

from typing import Any

import httpx2

from chatbuffer.errors import ChatbufferError


class AdminError(ChatbufferError):
    """The admin API refused or could not be reached; the message says which."""


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._timeout_s = timeout_s

    def list_buffers(self, status: str, limit: int) -> list[dict[str, Any]]:
        answer = self._call("GET", "/admin/buffers", params={"status": status, "limit": limit})
        buffers: list[dict[str, Any]] = answer.get("buffers", [])
        return buffers

    def replay(self, buffer_id: str) -> dict[str, Any]:
        answer = self._call("POST", f"/admin/buffers/{buffer_id}/replay")
        buffer: dict[str, Any] = answer["buffer"]
        return buffer

    def show(self, buffer_id: str) -> dict[str, Any]:
        return self._call("GET", f"/admin/buffers/{buffer_id.strip()}")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self._base_url + path
        try:
            # trust_env=False: an operator's proxy settings must not see the admin token.
            with httpx2.Client(timeout=self._timeout_s, trust_env=False) as client:
                response = client.request(method, url, headers=self._headers, **kwargs)
        except httpx2.HTTPError as exc:
            reason = type(exc).__name__
            raise AdminError(f"cannot reach chatbuffer at {self._base_url}: {reason}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            said = body.get("error") if isinstance(body, dict) else None
            raise AdminError(f"{method} {path} answered {response.status_code}: {said or '-'}")
        if not isinstance(body, dict):
            raise AdminError(f"{method} {path} answered something that is not a JSON object")
        return body


def format_table(buffers: list[dict[str, Any]]) -> str:
    """One line per buffer, widest-first columns an operator can read and copy ids from."""
    if not buffers:
        return "no buffers"
    header = ("BUFFER", "CONVERSATION", "STATUS", "MSGS", "TRIES", "UPDATED", "ERROR")
    rows = [
        (
            str(b["buffer_id"]),
            f"{b['account_id']}/{b['conversation_id']}",
            str(b["status"]),
            str(b["messages"]),
            str(b["attempts"]),
            str(b["updated_at"])[:19],
            str(b.get("error") or b.get("outcome") or ""),
        )
        for b in buffers
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *rows]
    )


def format_buffer(buffer: dict[str, Any]) -> str:
    """One buffer for an operator: its messages, then what the bot posted or, in shadow mode,
    would have posted."""
    lines = [
        f"buffer {buffer['buffer_id']}  conversation {buffer['account_id']}/"
        f"{buffer['conversation_id']}  {buffer['status']}",
    ]
    for message in buffer.get("messages", []):
        lines.append(
            f"  contact  {str(message['received_at'])[:19]}  {message.get('content') or ''}"
        )
    answer = buffer.get("answer")
    if answer is None:
        lines.append("  (nothing posted)")
    else:
        if answer.get("shadow"):
            state = "SHADOW, not sent"
        elif answer.get("sent"):
            state = f"sent as message {answer['chatwoot_message_id']}"
        else:
            state = "not confirmed by Chatwoot"
        lines.append(f"  bot {answer['kind']} ({state}): {answer['content']}")
    return "\n".join(lines)
