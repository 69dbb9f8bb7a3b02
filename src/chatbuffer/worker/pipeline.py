"""Answer one claimed buffer: aggregate, ask the model once, then reply, hand off or stay silent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from chatbuffer.domain import control_words, decision, history, shadow, urgency, whatsapp
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.history import HistoryPolicy, HistoryWindow
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import (
    Assessment,
    ConversationKey,
    HandOff,
    HistoryEntry,
    InboundMessage,
    ModelDecision,
    SendReply,
    StaySilent,
)
from chatbuffer.domain.ports import (
    BotStates,
    BufferContents,
    ChatwootAPI,
    ClaimedJob,
    Clock,
    ConversationHistory,
    ConversationMemory,
    FeatureFlags,
    HistorySource,
    Observer,
    PostedMessage,
    ReplyModel,
    SendCheck,
    SendLedger,
    Summarizer,
    Transcriber,
)
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ChatwootError, DependencyError, TranscriptionError
from chatbuffer.worker.asking import Asker
from chatbuffer.worker.controls import StaleBursts

logger = logging.getLogger(__name__)


#: The settings' defaults (30 s quiet, 300 s age cap, 50 messages).
DEFAULT_POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=50
)


class _Fresh:
    """A first delivery: nothing can have been posted yet, so nothing is looked for."""


_FRESH = _Fresh()


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    quality_threshold: float
    typing_enabled: bool
    #: At most this many earlier turns shown word for word (``HISTORY_LIMIT``).
    history_limit: int
    retry: RetryPolicy
    #: The buffer rules, for supersede (only buffers closed by quiet fold into newer ones).
    policy: BufferPolicy = DEFAULT_POLICY
    #: How long a reserved send keeps the lease: the Chatwoot timeout plus a margin, so the
    #: lease cannot run out while a POST may still land.
    send_hold: timedelta = timedelta(seconds=12)
    #: The shown turns' estimated tokens stay within this (``HISTORY_MAX_TOKENS``).
    history_max_tokens: int = 2_000
    #: Refresh the rolling summary once this many turns fell out of the window since it was
    #: made (``HISTORY_SUMMARY_EVERY``; 0: no summary).
    summary_every: int = 10
    #: A longer reply is posted in parts of at most this many characters (``REPLY_MAX_CHARS``).
    reply_max_chars: int = whatsapp.WHATSAPP_MAX_CHARS
    #: "typing…" before each part after the first, this long per character, at most
    #: ``pause_max`` (``REPLY_PAUSE_MS_PER_CHAR``, ``REPLY_PAUSE_MAX_MS``).
    pause_per_char: timedelta = timedelta(milliseconds=1)
    pause_max: timedelta = timedelta(seconds=3)
    #: Normalized control words (``HANDOFF_KEYWORDS``): a burst with one is handed off unanswered.
    handoff_keywords: frozenset[str] = frozenset()

    @property
    def history(self) -> HistoryPolicy:
        return HistoryPolicy(
            max_turns=self.history_limit,
            max_tokens=self.history_max_tokens,
            summary_every=self.summary_every,
        )


class Pipeline:
    """Processes one buffer held under a lease by ``owner``."""

    def __init__(
        self,
        *,
        history: ConversationHistory,
        ledger: SendLedger,
        flags: FeatureFlags,
        chatwoot: ChatwootAPI,
        model: ReplyModel,
        clock: Clock,
        observer: Observer,
        config: PipelineConfig,
        transcriber: Transcriber | None = None,
        asker: Asker | None = None,
        memory: ConversationMemory | None = None,
        earlier: HistorySource | None = None,
        summarizer: Summarizer | None = None,
        stale: StaleBursts | None = None,
        bot_states: BotStates | None = None,
    ) -> None:
        """``asker`` reads attachments, renders the prompt and asks ``model``; by default with
        the shipped template, no instructions and no attachment reader. ``memory`` keeps what
        ``earlier`` fetches from Chatwoot (a conversation's history from before chatbuffer) and
        the summaries ``summarizer`` writes; without them neither happens. ``stale`` names the
        bursts that waited through a pause too long: a human gets those. ``bot_states``
        keeps the bot out of conversations handed off or turned off, and records hand-offs."""
        self._bot_states = bot_states
        self._history = history
        self._memory = memory
        self._earlier = earlier if memory is not None else None
        self._summarizer = summarizer if memory is not None else None
        self._asker = asker or Asker(model=model)
        self._ledger = ledger
        self._transcriber = transcriber
        self._flags = flags
        self._chatwoot = chatwoot
        self._clock = clock
        self._observer = observer
        self._config = config
        self._stale = stale

    async def process(self, job: ClaimedJob, owner: str) -> None:
        key = job.key
        lateness_ms = (job.claimed_at - job.scheduled_for) / timedelta(milliseconds=1)
        contents = await self._history.load(
            job, owner, self._config.history.fetch_limit, backfill=self._earlier is not None
        )
        self._observer.event(
            "buffer_closed",
            key,
            buffer_id=str(job.buffer_id),
            messages=len(contents.messages),
            attempt=job.attempts,
            lateness_ms=round(lateness_ms, 1),
            **_window_fields(job, contents, self._config.handoff_keywords),
        )
        if not contents.messages:
            await self._ledger.complete(job, owner, self._clock.now(), "empty buffer")
            return
        aside = await self._stays_out(job, contents)
        stale = (
            aside is None
            and self._stale is not None
            and not contents.posted
            and await self._stale.is_stale(job, contents.messages, self._clock.now())
        )
        typing = (
            not stale
            and aside is None
            and self._config.typing_enabled
            and await self._flags.is_enabled(Flag.TYPING_INDICATORS, key)
        )
        shown: HistoryWindow | None = None
        try:
            if typing:
                await self._typing(job, on=True)
            if aside is not None:
                await self._step_aside(job, owner, contents, aside)
            elif stale:
                await self._hand_over_stale(job, owner, contents)
            else:
                shown = await self._answer(job, owner, contents, typing=typing)
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
                # Shielded: a buffer abandoned on a lost lease is cancelled, and the contact must
                # not be left watching "typing…".
                await asyncio.shield(self._typing(job, on=False))
        if shown is not None and shown.needs_summary:
            # After the reply, so the contact never waits for it.
            await self._summarize(key, shown)

    async def hand_back(self, job: ClaimedJob, owner: str, reason: str) -> None:
        """Give a held buffer back, due now, so another worker takes it at once instead of after
        the lease runs out (the worker is shutting down)."""
        await self._ledger.release_for_retry(job, owner, reason, self._clock.now())

    async def _answer(
        self, job: ClaimedJob, owner: str, contents: BufferContents, *, typing: bool
    ) -> HistoryWindow | None:
        """Answer the burst; the history window the model was shown, if it was asked."""
        handover = next(
            (
                p
                for p in contents.posted
                if p.kind == "failure_note" and p.chatwoot_message_id is None
            ),
            None,
        )
        if handover is not None:
            # An earlier attempt gave up but could not reach a human: only that is left to do.
            error = job.last_error or "gave up"
            await self._hand_over(job, owner, handover, error, after=_last_incoming(contents))
            return None
        # A reply followed by a hand-off note: the note is what is left to finish.
        earlier = next((p for p in contents.posted if p.kind == "handoff_note"), None) or next(
            (p for p in contents.posted if p.kind != "failure_note"), None
        )
        if earlier is not None:
            # An earlier attempt decided what to post and may have posted it: finish that
            # instead of asking the model again.
            await self._resume(job, owner, contents, earlier, typing=typing)
            return None
        # The contact may have written again between the due time and the load (which read
        # this check with the burst): fold this burst into the newer one before paying for a
        # model call.
        if await self._settle(job, owner, contents.check) != "send":
            return None
        burst = await self._transcribe(contents.messages)
        include_history = await self._flags.is_enabled(Flag.ENHANCED_AI_PROCESSING, job.key)
        shown = HistoryWindow(policy=self._config.history)
        if include_history:
            turns = await self._with_earlier(job, contents)
            shown = history.window(turns, contents.summary, self._config.history)
        inputs = await self._asker.inputs(
            burst, shown.shown, summary=shown.summary, include_history=include_history
        )
        answer = (await self._asker.ask(inputs, buffer_id=job.buffer_id)).decision
        assessed = Assessment.of(answer, urgency.score(burst))
        outcome = decision.route(answer, quality_threshold=self._config.quality_threshold)
        key = job.key
        if isinstance(outcome, StaySilent):
            if await self._check(job, owner) == "send":
                note = f"silent: {outcome.reason}"
                await self._ledger.complete(
                    job, owner, self._clock.now(), note, assessment=assessed
                )
                self._observer.event(
                    "no_reply", key, buffer_id=str(job.buffer_id), reason=outcome.reason
                )
            return shown
        summary = decision.burst_summary(burst)
        if isinstance(outcome, HandOff) and outcome.reply is not None:
            await self._reply_then_hand_off(
                job, owner, contents, outcome, summary, answer, assessed, typing=typing
            )
            return shown
        if isinstance(outcome, SendReply):
            parts = await self._reply_parts(outcome.content, contents)
        else:
            assert isinstance(outcome, HandOff)
            parts = [PostedMessage("handoff_note", decision.handoff_note(outcome, summary))]
        # While the model wrote, a person may have taken over (never answer over them) or the
        # contact may have written again (then this reply is stale: answer the whole burst once).
        # The intent, every part of it, is recorded in the same transaction as that check.
        ids = await self._deliver(job, owner, parts, typing=typing)
        if ids is None:
            return shown
        reason = "replied" if isinstance(outcome, SendReply) else f"handed off: {outcome.reason}"
        await self._finish(job, owner, parts, ids, reason, assessed)
        message_id = ids[0]
        if isinstance(outcome, SendReply):
            self._observer.event(
                "reply_sent",
                key,
                buffer_id=str(job.buffer_id),
                chatwoot_message_id=message_id,
                confidence=answer.confidence,
                intent=answer.intent,
                reply=outcome.content,
                parts=len(parts),
            )
        else:
            self._observer.event(
                "handoff", key, buffer_id=str(job.buffer_id), reason=outcome.reason
            )
        return shown

    async def _hand_over_stale(self, job: ClaimedJob, owner: str, contents: BufferContents) -> None:
        """The burst waited through a pause for longer than ``PAUSE_STALE_AFTER_MS``: an answer
        now would come too late, so a human gets it (private note, conversation opened)."""
        assert self._stale is not None
        if await self._settle(job, owner, contents.check) != "send":
            return
        note = self._stale.note(contents.messages, self._clock.now())
        intent = PostedMessage("handoff_note", note)
        if await self._reserve(job, owner, intent) != "send":
            return
        message_id = await self._post(job, intent)
        await self._finish(job, owner, [intent], [message_id], "handed off: stale after a pause")
        self._observer.event(
            "handoff", job.key, buffer_id=str(job.buffer_id), reason="stale after a pause"
        )

    async def _with_earlier(
        self, job: ClaimedJob, contents: BufferContents
    ) -> Sequence[HistoryEntry]:
        """The loaded turns, and once per conversation the history Chatwoot had before
        chatbuffer (``CHATWOOT_USER_TOKEN``), fetched and kept. Fetching is a courtesy: when
        Chatwoot refuses or fails, the burst is answered with what is stored, and the fetch is
        tried again with the conversation's next burst."""
        before = contents.backfill_before
        if self._earlier is None or self._memory is None or before is None:
            return contents.history
        limit = self._config.history.fetch_limit
        # Kept before everything stored, the burst included, on chatbuffer's clock.
        earliest = min(
            [t.at for t in contents.history] + [m.received_at for m in contents.messages]
        )
        try:
            fetched = history.fit_before(
                await self._earlier.earlier(job.key, before, limit), earliest
            )
            await self._memory.record_backfill(job.key, fetched, self._clock.now())
        except Exception as exc:
            logger.warning(
                "could not fetch the earlier history of %s: %s",
                job.key,
                exc if isinstance(exc, ChatwootError) else type(exc).__name__,
            )
            return contents.history
        self._observer.event("history_fetched", job.key, messages=len(fetched))
        after = contents.summary.through if contents.summary is not None else None
        shown = [t for t in fetched if after is None or t.at > after]
        return history.merge(contents.history, shown)[-limit:]

    async def _summarize(self, key: ConversationKey, shown: HistoryWindow) -> None:
        """Fold the turns that fell out of the window into the conversation's summary: one
        model call and one write, only when ``HISTORY_SUMMARY_EVERY`` turns are waiting. A
        failure costs nothing but the summary's freshness: the next burst tries again."""
        if self._summarizer is None or self._memory is None:
            return
        try:
            text = await self._summarizer.summarize(
                history.summary_prompt(shown.summary, shown.fallen)
            )
            if not text.strip():
                logger.warning("the model wrote an empty summary for %s; kept the old one", key)
                return
            summary = history.refreshed(shown.summary, shown.fallen, text)
            await self._memory.save_summary(key, summary, self._clock.now())
        except Exception as exc:
            # Never the summary's text in the log: it retells the conversation.
            logger.warning(
                "could not refresh the conversation summary of %s: %s", key, type(exc).__name__
            )
            return
        self._observer.event("summary_refreshed", key, turns=summary.turns)

    async def _resume(
        self,
        job: ClaimedJob,
        owner: str,
        contents: BufferContents,
        earlier: PostedMessage,
        *,
        typing: bool,
    ) -> None:
        """Finish what an earlier attempt started, posting each part of its message at most once
        more (``_deliver``), in order, never those already confirmed."""
        parts = sorted((p for p in contents.posted if p.kind == earlier.kind), key=lambda p: p.part)
        ids = await self._deliver(
            job, owner, parts, typing=typing, resuming_after=_last_incoming(contents)
        )
        if ids is None:
            return
        reason = "replied" if earlier.kind == "reply" else "handed off"
        await self._finish(job, owner, parts, ids, f"{reason} (resumed)")
        self._observer.event(
            "reply_sent" if earlier.kind == "reply" else "handoff",
            job.key,
            buffer_id=str(job.buffer_id),
            chatwoot_message_id=ids[0],
            resumed=True,
            parts=len(parts),
        )

    async def _reply_parts(self, content: str, contents: BufferContents) -> list[PostedMessage]:
        """The reply as it is posted: in WhatsApp's formatting when the inbox's
        ``response_quality_enhancement`` flag is on, and cut into parts WhatsApp accepts."""
        inbox = contents.messages[-1].conversation.get("inbox_id") if contents.messages else None
        if await self._flags.is_enabled(
            Flag.RESPONSE_QUALITY_ENHANCEMENT,
            contents.messages[-1].key,
            inbox_id=inbox if isinstance(inbox, int) and not isinstance(inbox, bool) else None,
        ):
            content = whatsapp.to_whatsapp(content) or content
        pieces = whatsapp.split(content, self._config.reply_max_chars) or [content]
        return [PostedMessage("reply", text, part=i) for i, text in enumerate(pieces)]

    async def _deliver(
        self,
        job: ClaimedJob,
        owner: str,
        parts: Sequence[PostedMessage],
        *,
        typing: bool,
        resuming_after: int | _Fresh | None = _FRESH,
    ) -> list[int] | None:
        """Post each part not confirmed yet, in order; the Chatwoot ids of all of them, or None
        when the buffer is not to be answered (after all, or any more).

        Every reservation records all the parts (the first one does; later ones find them), so
        a crash at any point leaves the whole message to finish. Chatwoot has no idempotency
        key: when resuming, a part recorded without an id (the attempt crashed, or Chatwoot
        timed out after accepting it) is looked for in the conversation by its marker before it
        is posted again. Parts go out one after the other, so once one is not found none after
        it can have been posted. Once a part has reached the contact the rest follow even if
        the contact wrote again meanwhile (half an answer would be worse than an answer to a
        slightly stale burst); a person taking over, or a lost lease, stops them.
        """
        multipart = len(parts) > 1
        searching = not isinstance(resuming_after, _Fresh)
        after = None if isinstance(resuming_after, _Fresh) else resuming_after
        ids: list[int] = []
        # Recorded as intents: a part's id is recorded by its own confirmation.
        intents = [replace(p, chatwoot_message_id=None) for p in parts]
        for part in parts:
            marker = Marker(job.buffer_id, part.kind, part.part)
            message_id = part.chatwoot_message_id
            if message_id is None and searching:
                message_id = await self._chatwoot.find_marked(
                    job.key, marker, after_message_id=after
                )
                self._observer.event(
                    "send_reconciled",
                    job.key,
                    buffer_id=str(job.buffer_id),
                    kind=part.kind,
                    part=part.part,
                    found=message_id is not None,
                )
                searching = message_id is not None
                if message_id is not None and multipart:
                    await self._ledger.confirm_sent(job.key, marker, message_id)
            if message_id is None:
                if ids:
                    await self._pause(job, part, typing=typing)
                verdict = await self._ledger.reserve_send(
                    job, owner, intents, self._clock.now(), hold=self._config.send_hold
                )
                if ids and verdict == "newer":
                    verdict = "send"
                if await self._settle(job, owner, verdict) != "send":
                    return None
                message_id = await self._post(job, part)
                if multipart:
                    # Each part's id as soon as it is known: a crash before the next part must
                    # not post this one again.
                    await self._ledger.confirm_sent(job.key, marker, message_id)
            ids.append(message_id)
        return ids

    async def _pause(self, job: ClaimedJob, part: PostedMessage, *, typing: bool) -> None:
        """A person takes a moment to type the next part; "typing…" shows meanwhile."""
        seconds = whatsapp.typing_pause(
            part.content,
            per_char_s=self._config.pause_per_char.total_seconds(),
            cap_s=self._config.pause_max.total_seconds(),
        )
        if seconds <= 0:
            return
        if typing:
            await self._typing(job, on=True)
        await self._clock.sleep(seconds)

    async def _post(self, job: ClaimedJob, message: PostedMessage) -> int:
        return await self._chatwoot.send_message(
            job.key,
            message.content,
            private=message.kind != "reply",
            content_attributes=Marker(job.buffer_id, message.kind, message.part).attributes(),
        )

    async def _finish(
        self,
        job: ClaimedJob,
        owner: str,
        parts: Sequence[PostedMessage],
        ids: Sequence[int],
        note: str,
        assessment: Assessment | None = None,
    ) -> None:
        # A message in parts has had each part confirmed as it went; a single one is confirmed
        # with the completion, in its transaction.
        posted = replace(parts[0], chatwoot_message_id=ids[0]) if len(parts) == 1 else None
        if parts[0].kind == "handoff_note":
            # Recorded before the status change, so a retry after a failed toggle does not post
            # the note again.
            await self._ledger.confirm_sent(job.key, Marker(job.buffer_id, parts[0].kind), ids[0])
            await self._mark_handed_off(job.key, note, ids[0])
            await self._chatwoot.set_status(job.key, "open")
        await self._ledger.complete(
            job, owner, self._clock.now(), note, posted, assessment=assessment
        )

    async def _reserve(self, job: ClaimedJob, owner: str, message: PostedMessage) -> SendCheck:
        """The last check before a POST, which also keeps the lease for the POST's duration."""
        verdict = await self._ledger.reserve_send(
            job, owner, message, self._clock.now(), hold=self._config.send_hold
        )
        return await self._settle(job, owner, verdict)

    async def _check(self, job: ClaimedJob, owner: str) -> SendCheck:
        """``send``, or the reason not to: ``cancelled`` or ``newer`` (then superseded)."""
        return await self._settle(job, owner, await self._ledger.before_send(job, owner))

    async def _settle(self, job: ClaimedJob, owner: str, verdict: SendCheck) -> SendCheck:
        buffer_id = str(job.buffer_id)
        if verdict == "cancelled":
            self._observer.event("no_reply", job.key, buffer_id=buffer_id, reason="cancelled")
            return "cancelled"
        if verdict == "newer":
            into = await self._ledger.supersede(job, owner, self._clock.now(), self._config.policy)
            if into is not None:
                self._observer.event(
                    "buffer_superseded", job.key, buffer_id=buffer_id, into=str(into)
                )
                return "newer"
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
                await self._history.update_attachments(
                    message.key, message.chatwoot_message_id, message.attachments
                )
            done.append(message)
        return done

    async def _hand_over(
        self,
        job: ClaimedJob,
        owner: str,
        note: PostedMessage,
        error: str,
        *,
        after: int | None = None,
    ) -> None:
        """The bot gave up: tell a human with a private note, open the conversation for them,
        then mark the buffer failed.

        Chatwoot may be exactly what failed, so while it refuses for a passing reason the job
        stays queued and later attempts retry only this (no model call), up to twice
        ``MAX_PROCESSING_ATTEMPTS``; the note is looked for before it is posted again. Only then,
        or on a permanent refusal, is the buffer failed without a note, for an operator to see.
        """
        marker = Marker(job.buffer_id, note.kind)
        handed_over = False
        try:
            message_id = None
            if after is not None:
                message_id = await self._chatwoot.find_marked(
                    job.key, marker, after_message_id=after
                )
                # Resuming an earlier attempt's hand-over: nothing has kept the lease for this
                # POST yet (a newer burst does not stop a hand-over, a lost lease does).
                if (
                    message_id is None
                    and await self._ledger.reserve_send(
                        job, owner, note, self._clock.now(), hold=self._config.send_hold
                    )
                    == "cancelled"
                ):
                    return
            if message_id is None:
                message_id = await self._post(job, note)
            await self._ledger.confirm_sent(job.key, marker, message_id)
            await self._mark_handed_off(job.key, f"the bot could not answer: {error}", message_id)
            await self._chatwoot.set_status(job.key, "open")
            handed_over = True
        except ChatwootError as exc:
            if exc.retryable and job.attempts < 2 * self._config.retry.max_attempts:
                failed = f"{error}; handing over to a human failed: {exc}"
                await self._release(job, owner, failed, exc.retry_after)
                return
            logger.warning("could not hand failed buffer %s to a human: %s", job.buffer_id, exc)
            error = f"{error}; handing over to a human failed: {exc}"
        if not await self._ledger.fail(job, owner, error, self._clock.now()):
            return
        buffer_id = str(job.buffer_id)
        self._observer.event(
            "buffer_failed", job.key, buffer_id=buffer_id, attempt=job.attempts, error=error
        )
        if handed_over:
            self._observer.event("handoff", job.key, buffer_id=buffer_id, reason="failed")

    # -- stepping aside: hand-offs, an operator's off, control words -------------------------

    async def _stays_out(self, job: ClaimedJob, contents: BufferContents) -> str | None:
        """Why the bot neither types nor asks the model about this burst: ``handed_off`` or
        ``off`` (the conversation's bot state), or the control word the contact wrote; None
        to answer. An earlier attempt's send is always finished as it started."""
        if contents.posted:
            return None
        if self._bot_states is not None:
            state = await self._bot_states.state(job.key, self._clock.now())
            if state.mode in ("handed_off", "off"):
                return state.mode
        word = control_words.in_burst(contents.messages, self._config.handoff_keywords)
        return None if word is None else f"word:{word}"

    async def _step_aside(
        self, job: ClaimedJob, owner: str, contents: BufferContents, why: str
    ) -> None:
        buffer_id = str(job.buffer_id)
        if not why.startswith("word:"):
            # The messages stay stored (the history when the bot is back); nothing is sent.
            outcome = f"not answered: the bot is {why.replace('_', ' ')}"
            await self._ledger.complete(job, owner, self._clock.now(), outcome)
            self._observer.event("no_reply", job.key, buffer_id=buffer_id, reason=outcome)
            return
        word = why.removeprefix("word:")
        text = decision.control_word_note(word, decision.burst_summary(contents.messages))
        note = PostedMessage("handoff_note", text)
        verdict = await self._ledger.reserve_send(
            job, owner, note, self._clock.now(), hold=self._config.send_hold
        )
        # A newer burst does not stop it: the contact asked for a person, whatever came next.
        if verdict == "cancelled":
            self._observer.event("no_reply", job.key, buffer_id=buffer_id, reason="cancelled")
            return
        message_id = await self._post(job, note)
        await self._finish(job, owner, [note], [message_id], "handed off: control_word")
        self._observer.event("handoff", job.key, buffer_id=buffer_id, reason="control_word")

    async def _reply_then_hand_off(
        self,
        job: ClaimedJob,
        owner: str,
        contents: BufferContents,
        outcome: HandOff,
        summary: str,
        answer: ModelDecision,
        assessed: Assessment,
        *,
        typing: bool,
    ) -> None:
        """The model answered and asked for a person: the contact gets the answer first (in
        parts, like any reply), then a human gets the note and the conversation."""
        assert outcome.reply is not None
        parts = await self._reply_parts(outcome.reply, contents)
        ids = await self._deliver(job, owner, parts, typing=typing)
        if ids is None:
            return
        if len(parts) == 1:
            # A single part is otherwise confirmed by the completion, which here is the note's.
            await self._ledger.confirm_sent(job.key, Marker(job.buffer_id, "reply"), ids[0])
        buffer_id = str(job.buffer_id)
        self._observer.event(
            "reply_sent",
            job.key,
            buffer_id=buffer_id,
            chatwoot_message_id=ids[0],
            confidence=answer.confidence,
            intent=answer.intent,
            reply=outcome.reply,
            parts=len(parts),
        )
        note = PostedMessage("handoff_note", decision.handoff_note(outcome, summary))
        verdict = await self._ledger.reserve_send(
            job, owner, note, self._clock.now(), hold=self._config.send_hold
        )
        if verdict == "cancelled":
            return
        note_id = await self._post(job, note)
        why = f"replied, then handed off: {outcome.reason}"
        await self._finish(job, owner, [note], [note_id], why, assessed)
        self._observer.event("handoff", job.key, buffer_id=buffer_id, reason=outcome.reason)

    async def _mark_handed_off(self, key: ConversationKey, reason: str, note_id: int) -> None:
        """Recorded before the conversation is opened: a message arriving meanwhile is kept
        but not answered. Failing to record it must not stop the hand-off itself. In shadow
        mode nothing reached Chatwoot (the conversation stays pending there, and no status
        change would ever hand it back), so nothing is recorded."""
        if self._bot_states is None or shadow.is_shadow(note_id):
            return
        try:
            await self._bot_states.hand_off(key, reason, self._clock.now())
        except Exception as exc:
            logger.warning("could not record the hand-off of %s: %s", key, type(exc).__name__)

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
        if not self._config.retry.gives_up(job.attempts, retryable=retryable):
            await self._release(job, owner, error, retry_after)
            return
        note = PostedMessage("failure_note", decision.failure_note(error, attempts=job.attempts))
        # The note is a send like any other: not over a person who took over, folded into a
        # newer burst if the contact wrote again, and recorded before it is posted.
        if await self._reserve(job, owner, note) == "send":
            await self._hand_over(job, owner, note, error)

    async def _release(
        self, job: ClaimedJob, owner: str, error: str, retry_after: float | None
    ) -> None:
        retry_at = self._clock.now() + self._config.retry.delay(
            job.attempts, retry_after=retry_after
        )
        await self._ledger.release_for_retry(job, owner, error, retry_at)
        self._observer.event(
            "attempt_failed",
            job.key,
            buffer_id=str(job.buffer_id),
            attempt=job.attempts,
            error=error,
            retry_at=retry_at,
        )


def _last_incoming(contents: BufferContents) -> int | None:
    """The burst's newest Chatwoot message id: anything the bot posted for it comes after."""
    return max((m.chatwoot_message_id for m in contents.messages), default=None)


def _window_fields(
    job: ClaimedJob, contents: BufferContents, keywords: frozenset[str]
) -> dict[str, Any]:
    """The buffer's timing and contact, for the metrics and the ``buffer_processed`` log; a
    burst closed by a control word says so (the caps cannot tell)."""
    if not contents.messages:
        return {}
    times = [m.received_at for m in contents.messages]
    fields: dict[str, Any] = {
        "first_message_at": min(times),
        "last_message_at": max(times),
        "scheduled_for": job.scheduled_for,
        "contact_id": contents.messages[0].sender.get("id"),
    }
    if control_words.in_burst(contents.messages, keywords) is not None:
        fields["close_reason"] = "control_word"
    return fields
