"""``PromptTemplate``: the prompt as a Jinja2 template an operator can replace.

The template is data from outside the code, so it runs in Jinja2's immutable sandbox (no
attribute access to Python internals, no changing the variables) with ``StrictUndefined`` (a
misspelt variable is an error, not an empty string) and without a loader (no ``include`` or
``extends``: one file is the whole prompt). Its two blocks, ``system`` and ``user``, are rendered
separately into the two messages. A template is tried once on sample data when it is loaded, so
a mistake stops start-up instead of a reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatbuffer.domain import aggregation
from chatbuffer.domain.aggregation import Prompt, PromptInputs
from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.model import (
    Attachment,
    AttachmentContent,
    ConversationKey,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
    InlineImage,
)

BLOCKS = ("system", "user")
SHIPPED_NAME = "default.jinja"


class TemplateProblem(ValueError):
    """The template cannot be used; the message says where and why."""


class PromptTemplate:
    """Renders ``PromptInputs`` into the ``Prompt`` the model is sent."""

    def __init__(self, source: str, *, name: str = "<template>") -> None:
        self.source = source
        self.name = name
        environment = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(f"{name} line {exc.lineno}: {exc.message}") from None
        missing = [b for b in BLOCKS if b not in self._template.blocks]
        if missing:
            raise TemplateProblem(
                f"{name} has no {' or '.join(missing)} block; it needs "
                "{% block system %}…{% endblock %} and {% block user %}…{% endblock %}"
            )
        # A mistake (an unknown variable, a filter on the wrong type) shows now, not at the
        # first customer's message: once with everything present, once with nothing optional.
        for sample in SAMPLES:
            self.render(sample)

    @classmethod
    def shipped(cls) -> PromptTemplate:
        return _SHIPPED

    def render(self, inputs: PromptInputs) -> Prompt:
        variables, images = aggregation.prepare(inputs)
        system, user = (self._block(name, variables) for name in BLOCKS)
        return Prompt(system=system, user=user, images=images)

    def _block(self, name: str, variables: Mapping[str, Any]) -> str:
        render: Callable[[Any], Iterator[str]] = self._template.blocks[name]
        try:
            text = "".join(render(self._template.new_context(dict(variables)))).strip()
        except Exception as exc:  # a template is code from outside: any error is its own
            line = self._line_of(exc)
            where = f" line {line}" if line else ""
            raise TemplateProblem(
                f"{self.name}{where}, block {name}: {type(exc).__name__}: {exc}"
            ) from None
        if not text:
            raise TemplateProblem(f"{self.name}: the {name} block renders nothing")
        return text

    def _line_of(self, exc: Exception) -> int | None:
        """The template line an error happened on: its own, or the innermost frame of the
        compiled template mapped back to the source."""
        line = getattr(exc, "lineno", None)
        if isinstance(line, int):
            return line
        tb = exc.__traceback__
        found: int | None = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<template>":
                found = self._template.get_corresponding_lineno(tb.tb_lineno)
            tb = tb.tb_next
        return found


def shipped_source() -> str:
    return resources.files(__package__).joinpath(SHIPPED_NAME).read_text(encoding="utf-8")


def _sample() -> PromptInputs:
    """A burst with every kind of content, to try a template on when it is loaded."""
    key = ConversationKey(1, 1)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    common: dict[str, Any] = {
        "key": key,
        "content_type": "text",
        "sender": {"name": "Ana", "custom_attributes": {"plan": "gold", "language": "pt-BR"}},
        "conversation": {
            "channel": "Channel::Whatsapp",
            "inbox_id": 1,
            "inbox_name": "Sales",
            "labels": ["vip"],
            "custom_attributes": {"order": "4411"},
        },
    }
    photo = Attachment("image", "https://chatwoot.invalid/p.jpg", content_type="image/jpeg")
    messages = [
        InboundMessage(
            chatwoot_message_id=1, content="hi", kind="text", received_at=start, **common
        ),
        InboundMessage(
            chatwoot_message_id=2,
            content="this one",
            kind="image",
            received_at=start + timedelta(seconds=1),
            attachments=(photo, Attachment("image", content_type="image/webp")),
            **common,
        ),
        InboundMessage(
            chatwoot_message_id=3,
            content=None,
            kind="file",
            received_at=start + timedelta(seconds=2),
            attachments=(
                Attachment(
                    "file", "https://chatwoot.invalid/a.pdf", content_type="application/pdf"
                ),
                Attachment("audio", transcript="it is late"),
                Attachment(
                    "location", fallback_title="Shop", coordinates_lat=1.0, coordinates_long=2.0
                ),
                Attachment("contact", fallback_title="+5511999999999", contact_name="Bia"),
            ),
            **common,
        ),
    ]
    return PromptInputs(
        messages=messages,
        history=[
            HistoryEntry("contact", "hello", start - timedelta(hours=1)),
            HistoryEntry("assistant", "Hi!", start - timedelta(minutes=59)),
            HistoryEntry("agent", "I will check.", start - timedelta(minutes=58), author="Bruno"),
            HistoryEntry("agent", "Sent from the phone.", start - timedelta(minutes=57)),
        ],
        summary=ConversationSummary("Ana asked about a refund.", start - timedelta(hours=2), 12),
        attributes=AttributeSelection.parse("*"),
        contents={
            (2, 0): AttachmentContent(image=InlineImage("image/png", b"\x89PNG")),
            (3, 0): AttachmentContent(text="page one", pages=1),
        },
        instructions="We are a shop.",
    )


SAMPLES = (
    _sample(),
    replace(
        _sample(),
        history=(),
        summary=None,
        attributes=AttributeSelection(),
        contents={},
        instructions="",
        vision=False,
    ),
)
_SHIPPED = PromptTemplate(shipped_source(), name="the shipped template")
