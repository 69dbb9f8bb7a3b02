"""``chatbuffer flags`` and ``chatbuffer rollout``: the operators' live controls, read and written
in the database named by ``DATABASE_URL``. Every running process sees a change within 5 s
(``flags.CONTROLS_TTL``): nothing restarts."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from chatbuffer.domain import control
from chatbuffer.domain.control import Controls
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.ports import ControlWriter, StoredControls
from chatbuffer.settings import Settings
from chatbuffer.storage import database
from chatbuffer.storage.controls import SqlControls

T = TypeVar("T")


async def _with_controls(
    settings: Settings, act: Callable[[SqlControls], Coroutine[Any, Any, T]]
) -> T:
    engine = database.create_engine(settings.database_url, pool_size=1)
    try:
        return await act(SqlControls(engine))
    finally:
        await engine.dispose()


async def read(settings: Settings) -> StoredControls:
    return await _with_controls(settings, lambda c: c.read_controls())


async def set_flag(settings: Settings, flag: Flag, on: bool, inbox_id: int | None) -> None:
    async def act(writer: ControlWriter) -> None:
        if inbox_id is None:
            await writer.set_flag(flag, on)
        else:
            await writer.set_values({control.inbox_flag_name(flag, inbox_id): _word(on)})

    await _with_controls(settings, act)


async def clear_inbox_flag(settings: Settings, flag: Flag, inbox_id: int) -> None:
    async def act(writer: ControlWriter) -> None:
        await writer.set_values({control.inbox_flag_name(flag, inbox_id): None})

    await _with_controls(settings, act)


async def set_values(settings: Settings, values: dict[str, str | None]) -> None:
    async def act(writer: ControlWriter) -> None:
        await writer.set_values(values)

    await _with_controls(settings, act)


def flags_table(stored: StoredControls) -> str:
    """One line per flag: its global value, the inboxes that differ, what it does."""
    controls = control.parse(stored.flags, stored.values)
    lines = [f"{'flag':<30} {'on':<4} {'per inbox':<22} description"]
    for flag in Flag:
        value = controls.flags.get(flag, flag.default)
        inboxes = sorted(
            (inbox, on) for (f, inbox), on in controls.inbox_flags.items() if f is flag
        )
        per_inbox = ", ".join(f"{inbox}:{_word(on)}" for inbox, on in inboxes) or "-"
        lines.append(f"{flag.value:<30} {_word(value):<4} {per_inbox:<22} {flag.description}")
    return "\n".join(lines)


def rollout_text(controls: Controls) -> str:
    canaries = ", ".join(sorted(controls.canaries)) or "none"
    buffering = controls.flags.get(Flag.MESSAGE_BUFFERING, Flag.MESSAGE_BUFFERING.default)
    lines = [
        f"buffered path: {controls.rollout_percent:g}% of conversations"
        + ("" if buffering else " (but message_buffering is off: every one is immediate)"),
        f"canaries (always buffered): {canaries}",
        "shadow mode: "
        + (
            "on (the buffered path records its replies and sends nothing)"
            if controls.shadow
            else "off"
        ),
        pause_text(controls),
    ]
    return "\n".join(lines)


def pause_text(controls: Controls) -> str:
    """One line: paused or running, and who last paused or resumed the bot, when."""
    pause = controls.pause
    if pause.paused:
        return f"bot: PAUSED by {pause.paused_by or '?'} at {_when(pause.paused_at)}"
    if pause.resumed_at is not None:
        return f"bot: running (resumed by {pause.resumed_by or '?'} at {_when(pause.resumed_at)})"
    return "bot: running"


def _when(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at is not None else "?"


def _word(on: bool) -> str:
    return "on" if on else "off"
