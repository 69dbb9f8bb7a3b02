"""``chatbuffer prompt show`` and ``prompt try``: the prompt as the service sends it, on stored
bursts, so a business can see it and test a change of instructions before it goes live.

Both wire a ``Runtime`` from the same settings as a worker and go through the worker's own
``Asker``, template, instructions and attachment reader, so what they print is what the service
sends. They read the database and download the bursts' attachments from Chatwoot; they never post
to Chatwoot or change a row.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

from chatbuffer.app import Runtime
from chatbuffer.domain import aggregation, decision, history
from chatbuffer.domain.aggregation import PromptInputs
from chatbuffer.domain.instructions import BotInstructions
from chatbuffer.domain.model import HandOff, SendReply
from chatbuffer.domain.ports import StoredBurst
from chatbuffer.errors import ChatbufferError, DependencyError
from chatbuffer.prompting.loading import read_text
from chatbuffer.settings import Settings
from chatbuffer.worker.asking import Asker

_DATA_URL = re.compile(r"^data:([^;,]+);base64,(.*)$", re.DOTALL)


class NotFound(ChatbufferError):
    """The buffer named on the command line is not stored (or has no messages)."""


async def show(settings: Settings, buffer_id: uuid.UUID, *, short_images: bool = False) -> str:
    """The exact chat-completions request body the service sends for a stored buffer, as JSON."""
    async with Runtime(settings).opened() as runtime:
        policy = settings.history_policy
        burst = await runtime.archive().burst(buffer_id, policy.fetch_limit)
        if burst is None:
            raise NotFound(f"no stored buffer {buffer_id} with messages")
        asker = runtime.asker()
        inputs = await _inputs(runtime, burst, settings)
        request = runtime.model_request(asker.prompt(inputs))
    if short_images:
        request = _shorten_images(request)
    return json.dumps(request, indent=2, ensure_ascii=False)


async def _inputs(
    runtime: Runtime, burst: StoredBurst, settings: Settings, asker: Asker | None = None
) -> PromptInputs:
    """What the worker would make of a stored burst now: the same history window and summary
    (``domain.history``), the flags as they are, the attachments downloaded again."""
    include_history = await runtime.include_history(burst.key)
    shown = history.window(burst.history, burst.summary, settings.history_policy)
    return await (asker or runtime.asker()).inputs(
        burst.messages,
        shown.shown if include_history else (),
        summary=shown.summary,
        include_history=include_history,
    )


@dataclass(frozen=True, slots=True)
class Trial:
    burst: StoredBurst
    lines: Sequence[str]
    new_title: str
    new_text: str
    failed: bool


async def try_instructions(
    settings: Settings, *, last: int, instructions: Path | None
) -> tuple[list[Trial], int]:
    """Ask the model again about the ``last`` stored bursts (oldest of them first), with the
    current instructions or those in ``instructions``; nothing is posted or stored."""
    async with Runtime(settings).opened() as runtime:
        asker = runtime.asker()
        if instructions is not None:
            asker = asker.with_instructions(
                BotInstructions(default=read_text(instructions, "--instructions"))
            )
        bursts = await runtime.archive().recent(last, settings.history_policy.fetch_limit)
        trials: list[Trial] = []
        for burst in reversed(bursts):
            inputs = await _inputs(runtime, burst, settings, asker)
            lines = [m["line"] for m in aggregation.variables(inputs)["messages"]]
            try:
                asked = await asker.ask(inputs, buffer_id=burst.buffer_id)
            except DependencyError as exc:
                trials.append(Trial(burst, lines, "new: the model failed", str(exc), True))
                continue
            outcome = decision.route(
                asked.decision, quality_threshold=settings.response_quality_threshold
            )
            answer = asked.decision
            if isinstance(outcome, SendReply):
                title = f"new: reply (confidence {answer.confidence:.2f}, intent {answer.intent})"
                text = outcome.content
            elif isinstance(outcome, HandOff):
                title = f"new: handed to a human ({outcome.reason})"
                text = outcome.draft or "(no draft)"
            else:
                title, text = "new: stays silent", outcome.reason
            trials.append(Trial(burst, lines, title, text, False))
    return trials, sum(t.failed for t in trials)


def side_by_side(trials: Sequence[Trial], *, width: int | None = None) -> str:
    """Each burst: its messages, then the stored answer and the new one in two columns."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    column = max(24, (width - 3) // 2)
    out: list[str] = []
    for trial in trials:
        burst = trial.burst
        count = len(burst.messages)
        out.append(
            f"== buffer {burst.buffer_id} · conversation {burst.key} · {count} message"
            f"{'s' if count != 1 else ''} · last {burst.last_message_at.isoformat()} "
            f"· {burst.status}"
        )
        out += [f"   - {line}" for line in trial.lines]
        old_title, old_text = _old(burst)
        left = _column(old_title, old_text, column)
        right = _column(trial.new_title, trial.new_text, column)
        for a, b in zip_longest(left, right, fillvalue=""):
            out.append(f"{a:<{column}} | {b}".rstrip())
        out.append("")
    if not trials:
        out.append("no stored bursts yet")
    return "\n".join(out).rstrip() + "\n"


def _old(burst: StoredBurst) -> tuple[str, str]:
    title, text = _old_answer(burst)
    found = burst.assessment
    if found is None:
        return title, text
    actions = ", ".join(found.actions) or "none"
    # Below the answer, so the column's heading stays one line.
    said = (
        f"(urgency {found.urgency}, intent {found.intent}, confidence {found.confidence:.2f}, "
        f"actions {actions})"
    )
    return title, f"{text}\n\n{said}" if text else said


def _old_answer(burst: StoredBurst) -> tuple[str, str]:
    answer = burst.answer
    if answer is None:
        return f"old: nothing posted (buffer {burst.status})", ""
    if answer.kind == "reply":
        sent = "sent" if answer.chatwoot_message_id is not None else "not confirmed"
        return f"old: reply ({sent})", answer.content
    return "old: handed to a human", answer.content


def _column(title: str, text: str, width: int) -> list[str]:
    heading = _wrap(title, width)
    return [*heading, "-" * max(len(line) for line in heading), *_wrap(text, width)]


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, break_long_words=True) or [""]
    return lines


def _shorten_images(request: dict[str, Any]) -> dict[str, Any]:
    """The request with each image's base64 replaced by its type and size, for reading."""
    copy: dict[str, Any] = json.loads(json.dumps(request))
    for message in copy.get("messages", []):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
            found = _DATA_URL.match(url) if isinstance(url, str) else None
            if found:
                size = len(found[2]) * 3 // 4 - found[2].count("=")
                part["image_url"]["url"] = f"data:{found[1]};base64,…({size} bytes)"
    return copy
