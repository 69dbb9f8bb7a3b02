"""Turn one buffer's messages (and the conversation's history) into the LLM prompt.

The prompt follows the rebuild plan: the burst as one turn, its audio transcripts, the recent
history, what we know of the contact, and the JSON answer format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from chatbuffer.domain.model import Attachment, HistoryEntry, InboundMessage

SYSTEM_PROMPT = (
    "You are a support agent answering a customer on WhatsApp for the business that runs this "
    "inbox. Be accurate, brief and friendly, in the customer's language. Answer only with the "
    "JSON object described in the instructions."
)

NO_TRANSCRIPT = "(voice note; no transcript available)"


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the reply model is asked."""

    system: str
    user: str


def describe(message: InboundMessage) -> str:
    """One message as a single line of the burst, attachments included."""
    return _line(message.content, message.attachments)


def describe_turn(entry: HistoryEntry) -> str:
    """One earlier turn as a line of the history, saying who spoke."""
    who = "Customer" if entry.role == "contact" else "You"
    return f"{who}: {_line(entry.content, entry.attachments)}"


def _line(content: str | None, attachments: Sequence[Attachment]) -> str:
    parts = [_describe_attachment(a) for a in attachments]
    text = (content or "").strip()
    if text:
        parts.append(text)
    return " ".join(parts) if parts else "(empty message)"


def _describe_attachment(attachment: Attachment) -> str:
    if attachment.file_type == "audio":
        return f"[voice note] {attachment.transcript or NO_TRANSCRIPT}"
    label = {"image": "image", "video": "video", "location": "location", "contact": "contact card"}
    kind = label.get(attachment.file_type, "file")
    where = f" {attachment.data_url}" if attachment.data_url else ""
    return f"[{kind}{where}]"


def transcripts(messages: Sequence[InboundMessage]) -> list[str]:
    """Every voice-note transcript in the burst, in order."""
    found: list[str] = []
    for message in messages:
        for attachment in message.attachments:
            if attachment.file_type == "audio":
                found.append(attachment.transcript or NO_TRANSCRIPT)
    return found


def time_span_ms(messages: Sequence[InboundMessage]) -> int:
    """Milliseconds between the first and the last message of the burst."""
    if len(messages) < 2:
        return 0
    first, last = messages[0].received_at, messages[-1].received_at
    return int((last - first).total_seconds() * 1000)


def build_prompt(
    messages: Sequence[InboundMessage],
    history: Sequence[HistoryEntry],
    *,
    include_history: bool = True,
) -> Prompt:
    """The plan's aggregated prompt for one burst."""
    if not messages:
        raise ValueError("a prompt needs at least one message")
    combined = "\n".join(f"- {describe(m)}" for m in messages)
    audio = "\n".join(f"- {t}" for t in transcripts(messages)) or "(none)"
    shown = history if include_history else ()
    past = "\n".join(describe_turn(h) for h in shown) or "(none)"
    sender = messages[-1].sender
    user_context = {
        "name": sender.get("name"),
        "channel": messages[-1].conversation.get("channel"),
    }
    user = f"""You are processing {len(messages)} WhatsApp messages received over \
{time_span_ms(messages)}ms.

Combined message content:
{combined}

Audio transcripts:
{audio}

Recent conversation history:
{past}

User context:
{json.dumps(user_context, indent=2, ensure_ascii=False)}

Instructions:
1. Analyze all messages as a cohesive conversation turn
2. Identify the primary intent and any sub-intents
3. Consider the time span - quick succession suggests related thoughts
4. Provide a single, comprehensive response that addresses all points
5. If no response is needed, indicate shouldRespond: false

Response format:
{{
  "shouldRespond": boolean,
  "content": "response text",
  "confidence": 0.0-1.0,
  "intent": "primary_intent",
  "actions": ["action1", "action2"]
}}
"""
    return Prompt(system=SYSTEM_PROMPT, user=user)
