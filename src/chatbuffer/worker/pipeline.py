"""Answer one claimed buffer: aggregate, ask the model once, then reply, hand off or stay silent."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from chatbuffer.domain import aggregation, decision
from chatbuffer.domain.model import HandOff, InboundMessage, SendReply, StaySilent
from chatbuffer.domain.ports import (
    BufferContents,
    BufferStore,
    ChatwootAPI,
    ClaimedJob,
    Clock,
    Observer,
    PostedMessage,
    ReplyModel,
    Transcriber,
)
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError, DependencyError, TranscriptionError
from chatbuffer.intake.webhook import REPLY_MARKER

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    quality_threshold: float
    typing_enabled: bool
    history_limit: int
    retry: RetryPolicy
    max_buffer_size: int = 50


class Pipeline:
    """Processes one buffer held under a lease by ``owner``."""

    def __init__(
        self,
        *,
        store: BufferStore,
        chatwoot: ChatwootAPI,
        model: ReplyModel,
        clock: Clock,
        observer: Observer,
        config: PipelineConfig,
        flags: Callable[[], Awaitable[Mapping[str, bool]]] | None = None,
        transcriber: Transcriber | None = None,
    ) -> None:
        self._store = store
        self._transcriber = transcriber
        self._flags = flags or store.flags
        self._chatwoot = chatwoot
        self._model = model
        self._clock = clock
        self._observer = observer
        self._config = config

    async def process(self, job: ClaimedJob, owner: str) -> None:
        key = job.key
        lateness_ms = (job.claimed_at - job.scheduled_for) / timedelta(milliseconds=1)
        contents = await self._store.load(job, self._config.history_limit)
        self._observer.event(
            "buffer_closed",
            key,
            buffer_id=str(job.buffer_id),
            messages=len(contents.messages),
            attempt=job.attempts,
            lateness_ms=round(lateness_ms, 1),
        )
        if not contents.messages:
            await self._store.complete(job, owner, self._clock.now(), "empty buffer")
            return
        flags = await self._flags()
        typing = self._config.typing_enabled and flags.get("typing_indicators", True)
        try:
            if typing:
                await self._typing(job, on=True)
            await self._answer(job, owner, contents, flags)
        except DependencyError as exc:
            await self._retry_or_fail(job, owner, str(exc), exc.retryable, exc.retry_after)
        except Exception as exc:
            # A bug must not lose the burst: record it on the job and try again later.
            logger.exception("unexpected error processing buffer %s", job.buffer_id)
            await self._retry_or_fail(
                job, owner, f"internal error: {type(exc).__name__}", True, None
            )
        finally:
            if typing:
                await self._typing(job, on=False)

    async def _answer(
        self, job: ClaimedJob, owner: str, contents: BufferContents, flags: Mapping[str, bool]
    ) -> None:
        # The contact may have written again between the due time and now: fold this burst into
        # the newer one before paying for a model call.
        if await self._check(job, owner) != "send":
            return
        burst = await self._transcribe(contents.messages)
        prompt = aggregation.build_prompt(
            burst,
            contents.history,
            include_history=flags.get("enhanced_ai_processing", True),
        )
        answer = await self._model.decide(prompt)
        outcome = decision.route(answer, quality_threshold=self._config.quality_threshold)
        key = job.key
        # While the model wrote, a person may have taken over (never answer over them) or the
        # contact may have written again (then this reply is stale: answer the whole burst once).
        if await self._check(job, owner) != "send":
            return
        marker = {REPLY_MARKER: {"buffer_id": str(job.buffer_id)}}
        if isinstance(outcome, SendReply):
            message_id = await self._chatwoot.send_message(
                key, outcome.content, content_attributes=marker
            )
            posted = PostedMessage("reply", outcome.content, message_id)
            await self._store.complete(job, owner, self._clock.now(), "replied", posted)
            self._observer.event(
                "reply_sent",
                key,
                buffer_id=str(job.buffer_id),
                chatwoot_message_id=message_id,
                confidence=answer.confidence,
                intent=answer.intent,
                reply=outcome.content,
            )
        elif isinstance(outcome, HandOff):
            note = decision.handoff_note(outcome)
            message_id = await self._chatwoot.send_message(
                key, note, private=True, content_attributes=marker
            )
            await self._chatwoot.set_status(key, "open")
            posted = PostedMessage("handoff_note", note, message_id)
            reason = f"handed off: {outcome.reason}"
            await self._store.complete(job, owner, self._clock.now(), reason, posted)
            self._observer.event(
                "handoff", key, buffer_id=str(job.buffer_id), reason=outcome.reason
            )
        else:
            assert isinstance(outcome, StaySilent)
            await self._store.complete(job, owner, self._clock.now(), f"silent: {outcome.reason}")
            self._observer.event(
                "no_reply", key, buffer_id=str(job.buffer_id), reason=outcome.reason
            )

    async def _check(self, job: ClaimedJob, owner: str) -> str:
        """``send``, or the reason not to: ``cancelled`` or ``superseded``."""
        verdict = await self._store.before_send(job, owner)
        buffer_id = str(job.buffer_id)
        if verdict == "cancelled":
            self._observer.event("no_reply", job.key, buffer_id=buffer_id, reason="cancelled")
            return "cancelled"
        if verdict == "newer":
            into = await self._store.supersede(
                job, owner, self._clock.now(), self._config.max_buffer_size
            )
            if into is not None:
                self._observer.event(
                    "buffer_superseded", job.key, buffer_id=buffer_id, into=str(into)
                )
                return "superseded"
        return "send"

    async def _transcribe(self, messages: Sequence[InboundMessage]) -> list[InboundMessage]:
        """Fill in the transcripts Chatwoot did not provide, and keep them for retries.

        A voice note that cannot be transcribed for good (not on the Chatwoot host, too large,
        refused) is left without a transcript, and the model is told so; a passing failure
        raises, so the whole buffer is retried.
        """
        if self._transcriber is None:
            return list(messages)
        done: list[InboundMessage] = []
        for message in messages:
            attachments = list(message.attachments)
            changed = False
            for i, attachment in enumerate(attachments):
                if attachment.file_type != "audio" or attachment.transcript:
                    continue
                try:
                    text = await self._transcriber.transcribe(attachment)
                except TranscriptionError as exc:
                    if exc.retryable:
                        raise
                    logger.warning(
                        "voice note %s of %s not transcribed: %s",
                        message.chatwoot_message_id,
                        message.key,
                        exc,
                    )
                    continue
                if text:
                    attachments[i] = replace(attachment, transcript=text)
                    changed = True
            if changed:
                message = replace(message, attachments=tuple(attachments))
                await self._store.update_attachments(
                    message.key, message.chatwoot_message_id, message.attachments
                )
            done.append(message)
        return done

    async def _hand_over_failure(self, job: ClaimedJob, error: str) -> None:
        """The bot gave up: tell a human, so the customer is not left without an answer."""
        note = decision.failure_note(error, attempts=job.attempts)
        try:
            await self._chatwoot.send_message(
                job.key,
                note,
                private=True,
                content_attributes={REPLY_MARKER: {"buffer_id": str(job.buffer_id)}},
            )
            await self._chatwoot.set_status(job.key, "open")
        except ChatwootError as exc:
            # Chatwoot itself may be what failed; the buffer stays visible as failed.
            logger.warning("could not hand failed buffer %s to a human: %s", job.buffer_id, exc)
            return
        self._observer.event("handoff", job.key, buffer_id=str(job.buffer_id), reason=error)

    async def _typing(self, job: ClaimedJob, *, on: bool) -> None:
        # Typing is a courtesy: its failure must never cost the reply.
        try:
            await self._chatwoot.set_typing(job.key, on=on)
        except ChatwootError as exc:
            logger.info("typing %s failed for %s: %s", "on" if on else "off", job.key, exc)

    async def _retry_or_fail(
        self,
        job: ClaimedJob,
        owner: str,
        error: str,
        retryable: bool,
        retry_after: float | None,
    ) -> None:
        policy = self._config.retry
        now = self._clock.now()
        if policy.gives_up(job.attempts, retryable=retryable):
            if await self._store.fail(job, owner, error, now):
                self._observer.event(
                    "buffer_failed",
                    job.key,
                    buffer_id=str(job.buffer_id),
                    attempt=job.attempts,
                    error=error,
                )
                await self._hand_over_failure(job, error)
            return
        retry_at = now + policy.delay(job.attempts, retry_after=retry_after)
        await self._store.release_for_retry(job, owner, error, retry_at)
        self._observer.event(
            "attempt_failed",
            job.key,
            buffer_id=str(job.buffer_id),
            attempt=job.attempts,
            error=error,
            retry_at=retry_at,
        )
