"""Whether the bot may act in one conversation, and why not.

* ``active``: it answers bursts as usual.
* ``paused``: a human agent (or the business phone) answered; the bot stays out until ``until``
  (``HUMAN_TAKEOVER_PAUSE_MS``) or until the conversation is handed back.
* ``handed_off``: the bot gave the conversation to a person (a control word, the model's
  ``handoff`` action, low confidence, a failure), with a private note, and opened it in Chatwoot.
  It stays out until the conversation comes back into ``BOT_ACTIVE_STATUSES`` or an operator
  resumes it.
* ``off``: an operator turned the bot off for the conversation; only an operator turns it back
  on (Chatwoot moves a resolved conversation back to ``pending`` by itself when the contact
  writes, so a status change must not undo an operator's decision).

While handed off or off, the contact's messages are still stored (they are the conversation's
history when the bot comes back), but the bot neither types nor answers. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Mode = Literal["active", "paused", "handed_off", "off"]

#: The stored modes (``paused`` comes from the human takeover pause, ``active`` is a stored row
#: after a resume, or no row at all).
STORED_MODES: frozenset[str] = frozenset({"active", "handed_off", "off"})


@dataclass(frozen=True, slots=True)
class StoredState:
    """A conversation's stored bot state (``conversation_bot_state``)."""

    mode: Mode
    since: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BotState:
    """What the bot may do in a conversation now."""

    mode: Mode
    #: Since when it is in this mode (None: never changed).
    since: datetime | None = None
    #: Why (handed off, off, or the last resume).
    reason: str | None = None
    #: Paused: until when.
    until: datetime | None = None

    @property
    def acts(self) -> bool:
        """Whether the bot may type and answer."""
        return self.mode == "active"


def current(stored: StoredState | None, human_until: datetime | None, now: datetime) -> BotState:
    """The state now: an operator's ``off`` first, then a hand-off, then a human's pause."""
    if stored is not None and stored.mode in ("off", "handed_off"):
        return BotState(stored.mode, since=stored.since, reason=stored.reason)
    if human_until is not None and now < human_until:
        return BotState("paused", until=human_until, reason="a human agent answered")
    if stored is not None:
        return BotState("active", since=stored.since, reason=stored.reason)
    return BotState("active")


def describe(state: BotState) -> str:
    """One line for an operator."""
    if state.mode == "paused":
        until = state.until.isoformat(timespec="seconds") if state.until else "?"
        return f"paused by a human until {until}"
    since = f" since {state.since.isoformat(timespec='seconds')}" if state.since else ""
    if state.mode == "handed_off":
        return f"handed off{since}: {state.reason or 'no reason recorded'}"
    if state.mode == "off":
        return f"off{since}: {state.reason or 'turned off by an operator'}"
    if state.reason:
        return f"active{since} ({state.reason})"
    return "active"
