"""What the model is told about one burst: the prompt's facts, before any template shapes them.

``variables`` turns a burst, its history, what was read from its attachments and the business's
instructions into plain values (strings, numbers, lists and dicts) that the prompt template
renders (``chatbuffer.prompting``; the variables are documented in ``docs/prompt.md``). The rules
that make a prompt safe live here, not in the template, so an operator's template keeps them:

* the customer's words (text, captions, transcripts, file names and text, history) are *data*:
  ``fence`` neutralises anything in them that could close the tags the template wraps them in,
  and a multi-line message is indented so it cannot fake a line of the prompt's own;
* an image reaches the model as bytes in a ``data:`` URL, numbered in the order the customer sent
  it, and never as its Chatwoot link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from chatbuffer.domain import contact as contacts
from chatbuffer.domain import urgency
from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.model import (
    Attachment,
    AttachmentContent,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
)

NO_TRANSCRIPT = "(voice note; no transcript available)"

#: The tags the shipped template wraps customer data in; customer text cannot open or close them.
FENCE_TAGS = (
    "customer_messages",
    "audio_transcripts",
    "customer_files",
    "conversation_history",
    "customer_context",
)
_NEUTRAL_ANGLE = "\u2039"
_FENCE = re.compile(r"<(\s*/?\s*)(" + "|".join(FENCE_TAGS) + r")", re.IGNORECASE)

#: The text sent back to the model, once, when its answer was not the JSON asked for.
REPAIR_REQUEST = (
    "Your answer could not be used: {problem}. Answer again with only the JSON object described "
    'under "Response format", with nothing before or after it.'
)
#: How much of an invalid answer is quoted back in the repair request.
REPAIR_QUOTE_CHARS = 4_000

AttachmentRef = tuple[int, int]
"""An attachment of the burst: (Chatwoot message id, its index in the message)."""

ReadKind = Literal["image", "text"]


@dataclass(frozen=True, slots=True)
class PromptImage:
    """One image of the burst as the model sees it: a label the text refers to, and its bytes."""

    label: str
    data_url: str


@dataclass(frozen=True, slots=True)
class Turn:
    """A message after the first user message (the repair exchange)."""

    role: Literal["assistant", "user"]
    content: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the reply model is asked: a system message, a user message with the burst's images
    after its text, and (for a repair) the turns that follow."""

    system: str
    user: str
    images: tuple[PromptImage, ...] = ()
    followups: tuple[Turn, ...] = ()


@dataclass(frozen=True, slots=True)
class PromptInputs:
    """Everything the prompt is made from."""

    messages: Sequence[InboundMessage]
    #: The earlier turns shown word for word, oldest first (``domain.history.window``).
    history: Sequence[HistoryEntry] = ()
    #: The rolling summary of the turns before those, if the conversation has one.
    summary: ConversationSummary | None = None
    #: Which of the contact's and the conversation's attributes the model may see.
    attributes: AttributeSelection = field(default_factory=AttributeSelection)
    #: What could be read from the burst's images and files (see ``wanted``).
    contents: Mapping[AttachmentRef, AttachmentContent] = field(default_factory=dict)
    #: The business's instructions for this inbox, verbatim ("" when there are none).
    instructions: str = ""
    include_history: bool = True
    #: Images go to the model as images; off, each is described in words instead.
    vision: bool = True


def is_sticker(message: InboundMessage, attachment: Attachment) -> bool:
    """WhatsApp stickers reach Chatwoot as WebP images (its photos are JPEG)."""
    if attachment.file_type != "image":
        return False
    return (
        message.content_type == "sticker"
        or (attachment.content_type or "").lower() == "image/webp"
        or (attachment.extension or "").lower().lstrip(".") == "webp"
    )


def wanted(
    messages: Sequence[InboundMessage], *, vision: bool
) -> list[tuple[AttachmentRef, ReadKind]]:
    """The attachments worth downloading for the prompt, in order: images (with vision) and
    files whose text can be read."""
    found: list[tuple[AttachmentRef, ReadKind]] = []
    for message in messages:
        for index, attachment in enumerate(message.attachments):
            ref = (message.chatwoot_message_id, index)
            if attachment.file_type == "image" and not is_sticker(message, attachment):
                if vision:
                    found.append((ref, "image"))
            elif attachment.file_type == "file" and readable_file(attachment):
                found.append((ref, "text"))
    return found


_TEXT_EXTENSIONS = frozenset({"txt", "csv", "md", "json", "log", "tsv"})


def readable_file(attachment: Attachment) -> bool:
    """A PDF or a plain-text file: the kinds whose text is given to the model."""
    kind, extension = _kind_and_extension(attachment)
    if is_pdf(attachment):
        return True
    return kind.startswith("text/") or kind == "application/json" or extension in _TEXT_EXTENSIONS


def is_pdf(attachment: Attachment) -> bool:
    kind, extension = _kind_and_extension(attachment)
    return kind == "application/pdf" or extension == "pdf"


def _kind_and_extension(attachment: Attachment) -> tuple[str, str]:
    kind = (attachment.content_type or "").split(";", 1)[0].strip().lower()
    extension = (attachment.extension or _extension(attachment.data_url)).lower().lstrip(".")
    return kind, extension


def neutralize(text: str) -> str:
    """Customer text made safe to place between the template's tags: a tag of ours inside it
    loses its ``<`` (it becomes U+2039, a single angle quote), so it can neither close the data
    nor open more."""
    return _FENCE.sub(lambda m: _NEUTRAL_ANGLE + m.group(1) + m.group(2), text)


def fence(text: str) -> str:
    """``neutralize``, and for a line of a list (a message, a transcript, a turn): continuation
    lines indented, so they cannot pass for a line of the prompt's own (a "- " item, a
    heading)."""
    lines = neutralize(text).strip().splitlines()
    return "\n  ".join(line.rstrip() for line in lines)


def time_span_ms(messages: Sequence[InboundMessage]) -> int:
    """Milliseconds between the first and the last message of the burst."""
    if len(messages) < 2:
        return 0
    first, last = messages[0].received_at, messages[-1].received_at
    return int((last - first).total_seconds() * 1000)


def transcripts(messages: Sequence[InboundMessage]) -> list[str]:
    """Every voice-note transcript in the burst, in order."""
    return [
        a.transcript or NO_TRANSCRIPT
        for m in messages
        for a in m.attachments
        if a.file_type == "audio"
    ]


def variables(inputs: PromptInputs) -> dict[str, Any]:
    """The template's variables (documented in docs/prompt.md)."""
    return prepare(inputs)[0]


def prepare(inputs: PromptInputs) -> tuple[dict[str, Any], tuple[PromptImage, ...]]:
    """The template's variables, and the images the model is shown, in the order the customer
    sent them (their bytes are not among the variables: they follow the text)."""
    messages = inputs.messages
    if not messages:
        raise ValueError("a prompt needs at least one message")
    burst = _Burst(inputs)
    described = [burst.describe(m) for m in messages]
    shown_history = inputs.history if inputs.include_history else ()
    history = [
        {
            "role": _ROLES[h.role],
            "author": fence(h.author) if h.author else None,
            "text": history_line(h.content, h.attachments),
            "at": h.at.isoformat(),
        }
        for h in shown_history
    ]
    summary = inputs.summary if inputs.include_history else None
    last = messages[-1]
    contact = contacts.facts(messages, inputs.attributes)
    inbox_id = last.conversation.get("inbox_id")
    return {
        "instructions": inputs.instructions.strip(),
        "message_count": len(messages),
        "time_span_ms": time_span_ms(messages),
        "urgency": urgency.score(messages),
        "messages": [
            {"text": fence(m.content or ""), "line": line, "received_at": m.received_at.isoformat()}
            for m, line in zip(messages, described, strict=True)
        ],
        "burst": "\n".join(f"- {line}" for line in described),
        "transcripts": [fence(t) for t in transcripts(messages)],
        "images": burst.images,
        "shown_images": [i for i in burst.images if i["shown"]],
        "files": burst.files,
        "history": history,
        "history_included": inputs.include_history,
        "summary": fence(summary.text) if summary is not None else "",
        "summary_turns": summary.turns if summary is not None else 0,
        "contact": contact,
        "user_context_json": neutralize(json.dumps(contact, indent=2, ensure_ascii=False)),
        "inbox_id": inbox_id if isinstance(inbox_id, int) else None,
        "vision": inputs.vision,
    }, tuple(burst.shown)


def repair(prompt: Prompt, answer: str, problem: str) -> Prompt:
    """The same prompt, followed by the model's unusable answer and a request to fix it."""
    quoted = answer if len(answer) <= REPAIR_QUOTE_CHARS else answer[:REPAIR_QUOTE_CHARS] + "…"
    return Prompt(
        system=prompt.system,
        user=prompt.user,
        images=prompt.images,
        followups=(
            *prompt.followups,
            Turn("assistant", quoted),
            Turn("user", REPAIR_REQUEST.format(problem=problem)),
        ),
    )


class _Burst:
    """Numbers the burst's images and files and describes each message as one line."""

    def __init__(self, inputs: PromptInputs) -> None:
        self._inputs = inputs
        self.images: list[dict[str, Any]] = []
        self.shown: list[PromptImage] = []
        self.files: list[dict[str, Any]] = []
        self._lines: dict[int, str] = {}
        for message in inputs.messages:
            self._lines[message.chatwoot_message_id] = self._line(message)

    def describe(self, message: InboundMessage) -> str:
        return self._lines[message.chatwoot_message_id]

    def _line(self, message: InboundMessage) -> str:
        parts = [
            self._attachment(message, index, attachment)
            for index, attachment in enumerate(message.attachments)
        ]
        text = fence(message.content or "")
        if text:
            parts.append(text)
        return " ".join(parts) if parts else "(empty message)"

    def _attachment(self, message: InboundMessage, index: int, attachment: Attachment) -> str:
        content = self._inputs.contents.get((message.chatwoot_message_id, index))
        kind = attachment.file_type
        if kind == "audio":
            return f"[voice note] {fence(attachment.transcript or '') or NO_TRANSCRIPT}"
        if kind == "image" and is_sticker(message, attachment):
            return "[sticker]"
        if kind == "image":
            return self._image(attachment, content)
        if kind == "location":
            return f"[{_location(attachment)}]"
        if kind == "contact":
            return f"[{_contact_card(attachment)}]"
        if kind == "file":
            return self._file(attachment, content)
        return f"[{fence(kind) or 'file'}]"

    def _image(self, attachment: Attachment, content: AttachmentContent | None) -> str:
        label = f"image {len(self.images) + 1}"
        image = content.image if content is not None and self._inputs.vision else None
        why: str | None = None
        if image is None:
            if not self._inputs.vision:
                why = "images are not shown to you"
            elif content is not None and content.problem:
                why = content.problem
            else:
                why = "it could not be downloaded"
        self.images.append(
            {
                "label": label,
                "shown": image is not None,
                "media_type": image.media_type if image else attachment.content_type,
                "problem": why,
            }
        )
        if image is not None:
            self.shown.append(PromptImage(label=f"[{label}]", data_url=image.data_url))
            return f"[{label}, attached below]"
        return f"[{label}, not shown: {why}]"

    def _file(self, attachment: Attachment, content: AttachmentContent | None) -> str:
        label = f"file {len(self.files) + 1}"
        name = fence(_file_name(attachment))
        has_text = content is not None and content.text is not None
        problem = None
        if not has_text:
            if content is not None and content.problem:
                problem = content.problem
            elif readable_file(attachment):
                problem = "it could not be downloaded"
            else:
                problem = f"its text cannot be read ({attachment.content_type or 'unknown type'})"
        self.files.append(
            {
                "label": label,
                "name": name,
                "content_type": attachment.content_type,
                "text": neutralize(content.text or "").strip() if has_text and content else "",
                "truncated": bool(content and content.truncated),
                "pages": content.pages if content else None,
                "problem": problem,
            }
        )
        if has_text:
            return f"[{label}: {name}, text below]"
        return f"[{label}: {name}, not read: {problem}]"


_ROLES = {"contact": "customer", "assistant": "assistant", "agent": "agent"}


def history_line(content: str | None, attachments: Sequence[Attachment]) -> str:
    """An earlier turn as one line (made safe, attachments first)."""
    parts: list[str] = []
    for attachment in attachments:
        kind = attachment.file_type
        if kind == "audio":
            parts.append(f"[voice note] {fence(attachment.transcript or '') or NO_TRANSCRIPT}")
        elif kind == "location":
            parts.append(f"[{_location(attachment)}]")
        elif kind == "contact":
            parts.append(f"[{_contact_card(attachment)}]")
        elif kind == "file":
            parts.append(f"[file: {fence(_file_name(attachment))}]")
        else:
            parts.append(f"[{fence(kind)}]")
    text = fence(content or "")
    if text:
        parts.append(text)
    return " ".join(parts) if parts else "(empty message)"


def _location(attachment: Attachment) -> str:
    details = [fence(attachment.fallback_title)] if attachment.fallback_title else []
    lat, long = attachment.coordinates_lat, attachment.coordinates_long
    if lat is not None and long is not None:
        details.append(f"coordinates {lat}, {long}")
    return "location: " + "; ".join(details) if details else "location"


def _contact_card(attachment: Attachment) -> str:
    details = [fence(d) for d in (attachment.contact_name, attachment.fallback_title) if d]
    return "contact card: " + ", ".join(details) if details else "contact card"


def _extension(url: str | None) -> str:
    name = _url_name(url)
    return name.rsplit(".", 1)[1] if "." in name else ""


def _url_name(url: str | None) -> str:
    if not url:
        return ""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _file_name(attachment: Attachment) -> str:
    """The file's name as the customer sent it; never its link."""
    return _url_name(attachment.data_url) or "unnamed file"
