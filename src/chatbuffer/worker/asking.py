"""Ask the model about one burst.

Reads the burst's images and files (through the ``AttachmentReader`` port), renders the prompt
with the business's instructions for the burst's inbox, and deals with the two answers that are
not a decision yet:

* the endpoint refuses images (a model without vision): the turn is asked once more with every
  image described in words instead;
* the model's answer is not the JSON asked for: it is shown its answer and what is wrong with it,
  once; a second bad answer is an ordinary failed attempt (``InvalidModelAnswer`` is a retryable
  ``ModelError``), retried by the worker's retry policy and in the end handed to a human.

With a ``BurstConsumer`` (``BURST_WEBHOOK_URL``) the burst goes to it as one event instead of to
the model; its answer is not repaired (a consumer that answers badly fails the attempt, which is
retried like any other).

Every model call goes through the ``ReplyModel`` the worker was given, so the model gate counts the
second call like any other. ``chatbuffer prompt show`` and ``prompt try`` use this same class, so
what they show and ask is what the service sends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from chatbuffer.domain import aggregation
from chatbuffer.domain.aggregation import AttachmentRef, Prompt, PromptInputs
from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.instructions import BotInstructions
from chatbuffer.domain.model import (
    AttachmentContent,
    ConversationSummary,
    HistoryEntry,
    InboundMessage,
    ModelDecision,
)
from chatbuffer.domain.ports import AttachmentReader, BurstConsumer, ReplyModel
from chatbuffer.errors import ImagesRefused, InvalidModelAnswer
from chatbuffer.prompting.template import PromptTemplate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Asked:
    """The decision and the prompt that got it (after a repair: the repair request; None when a
    burst consumer answered)."""

    decision: ModelDecision
    prompt: Prompt | None


class Asker:
    def __init__(
        self,
        *,
        model: ReplyModel,
        template: PromptTemplate | None = None,
        reader: AttachmentReader | None = None,
        instructions: BotInstructions | None = None,
        vision: bool = True,
        attributes: AttributeSelection | None = None,
        consumer: BurstConsumer | None = None,
    ) -> None:
        """``attributes``: which of the contact's and the conversation's attributes the model
        may see (``CONTACT_ATTRIBUTES_TO_MODEL``; none by default)."""
        self._consumer = consumer
        self._model = model
        self._template = template or PromptTemplate.shipped()
        self._reader = reader
        self._instructions = instructions or BotInstructions()
        self._vision = vision
        self._attributes = attributes or AttributeSelection()

    def with_instructions(self, instructions: BotInstructions) -> Asker:
        """The same, with other instructions (``chatbuffer prompt try --instructions``)."""
        return Asker(
            model=self._model,
            template=self._template,
            reader=self._reader,
            instructions=instructions,
            vision=self._vision,
            attributes=self._attributes,
            consumer=self._consumer,
        )

    async def inputs(
        self,
        messages: Sequence[InboundMessage],
        history: Sequence[HistoryEntry],
        *,
        include_history: bool,
        summary: ConversationSummary | None = None,
    ) -> PromptInputs:
        """Everything the prompt is made of; downloads the burst's images and files.
        ``history`` is what is shown word for word (``domain.history.window``), ``summary``
        stands for the turns before it."""
        if not messages:
            raise ValueError("a prompt needs at least one message")
        contents: dict[AttachmentRef, AttachmentContent] = {}
        if self._reader is not None:
            attachments = {
                (m.chatwoot_message_id, i): a for m in messages for i, a in enumerate(m.attachments)
            }
            for ref, kind in aggregation.wanted(messages, vision=self._vision):
                contents[ref] = await self._reader.read(attachments[ref], kind)
        inbox_id = messages[-1].conversation.get("inbox_id")
        return PromptInputs(
            messages=messages,
            history=history,
            summary=summary,
            attributes=self._attributes,
            contents=contents,
            instructions=self._instructions.for_inbox(
                inbox_id if isinstance(inbox_id, int) else None
            ),
            include_history=include_history,
            vision=self._vision,
        )

    def prompt(self, inputs: PromptInputs) -> Prompt:
        return self._template.render(inputs)

    async def ask(self, inputs: PromptInputs, *, buffer_id: uuid.UUID | None = None) -> Asked:
        if self._consumer is not None:
            if buffer_id is None:
                raise ValueError("a burst consumer is asked about a stored buffer only")
            key = inputs.messages[0].key
            return Asked(await self._consumer.decide(key, buffer_id, inputs), None)
        prompt = self.prompt(inputs)
        try:
            return await self._decide(prompt)
        except ImagesRefused as exc:
            if not prompt.images:
                raise
            logger.warning(
                "the model endpoint refused the burst's images (%s); asking again with them "
                "described in words (AI_VISION_ENABLED=false skips the first try)",
                exc,
            )
            return await self._decide(self.prompt(replace(inputs, vision=False)))

    async def _decide(self, prompt: Prompt) -> Asked:
        try:
            return Asked(await self._model.decide(prompt), prompt)
        except InvalidModelAnswer as exc:
            # The problem names a field and a rule, never the answer's text (which may quote
            # the customer), so it may be logged.
            logger.info(
                "the model's answer was unusable (%s); asking it once to repair it", exc.problem
            )
            repaired = aggregation.repair(prompt, exc.answer, exc.problem)
            return Asked(await self._model.decide(repaired), repaired)
