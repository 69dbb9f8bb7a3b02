"""Stop paying for answers that cannot be delivered: a refused token or key pauses model calls.

When Chatwoot answers 401 or 403 to a message posted for an account, the next reply the model
writes for that account cannot be posted either;
when the model endpoint does, no answer can be written at all. Retrying each buffer would call
the model again and again (and log a line per attempt) until an operator fixes the token. The
``CredentialGuard`` remembers the refusal for ``CREDENTIAL_BACKOFF_MS``: model calls for that
account (for every account, when the model's own key was refused) are skipped, the buffer goes
back to the queue for later like any failed attempt, and one error a minute says why.

The guard wraps the ports (``ChatwootAPI``, ``ReplyModel``, ``Summarizer``, ``Transcriber``); the
account a model call is made for is the one of the buffer the worker's task is processing
(``AccountScopedPipeline`` names it in a context variable, per task).

Policy, not I/O: time comes from the injected ``Clock``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from chatbuffer.domain import marker as markers
from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.model import Attachment, ConversationKey, ModelDecision
from chatbuffer.domain.ports import (
    ChatwootAPI,
    ClaimedJob,
    Clock,
    ReplyModel,
    Summarizer,
    Transcriber,
)
from chatbuffer.errors import ChatwootError, DependencyError, ModelError
from chatbuffer.worker.pipeline import Pipeline

logger = logging.getLogger(__name__)

#: How often the same refusal is logged while it lasts.
LOG_EVERY = timedelta(minutes=1)

Source = Literal["Chatwoot", "the model endpoint"]

#: The account of the buffer this task is processing (None outside a buffer: `prompt try`).
current_account: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "chatbuffer_current_account", default=None
)

_T = TypeVar("_T")


class CredentialsRefused(ModelError):
    """A model call not made: Chatwoot or the model endpoint refused our credentials lately."""


@dataclass
class _Refusal:
    source: Source
    status: int
    until: datetime
    logged_at: datetime
    skipped: int = 0


class CredentialGuard:
    """What was refused, for whom, until when; shared by one worker process's wrappers.

    A Chatwoot refusal is kept per account (an agent bot belongs to one account, and Chatwoot
    Cloud refuses API calls per account's plan); a refusal of the model's key holds for every
    account, since every account's answers are written with that key.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        backoff: timedelta,
        on_refused: Callable[[Source], None] | None = None,
    ) -> None:
        self._clock = clock
        self._backoff = backoff
        #: Told of every refusal, paused or not (the credential metric counts them all).
        self._on_refused = on_refused
        #: Keyed by account id; None holds the model endpoint's refusal, for every account.
        self._refused: dict[int | None, _Refusal] = {}

    @property
    def enabled(self) -> bool:
        return self._backoff > timedelta(0)

    def refused(self, source: Source, status: int, account: int | None) -> None:
        """``source`` answered ``status`` (401/403) to a call for ``account`` (None: all)."""
        if self._on_refused is not None:
            self._on_refused(source)
        if not self.enabled:
            return
        now = self._clock.now()
        until = now + self._backoff
        known = self._refused.get(account)
        if known is not None and now - known.logged_at < LOG_EVERY:
            known.until, known.source, known.status = until, source, status
            return
        self._refused[account] = _Refusal(source, status, until, logged_at=now)
        self._log(source, status, account, skipped=known.skipped if known else 0)

    def accepted(self, source: Source, account: int | None) -> None:
        """``source`` accepted a call: a refusal it made for ``account`` is over (a plan was
        upgraded, a permission granted) and model calls go on at once."""
        known = self._refused.get(account)
        if known is not None and known.source == source:
            del self._refused[account]
            where = "every account" if account is None else f"account {account}"
            logger.warning("%s accepts chatbuffer's credentials again for %s", source, where)

    def check(self, account: int | None) -> None:
        """Raise ``CredentialsRefused`` when no model call should be made for ``account``."""
        now = self._clock.now()
        for holder in (None, account) if account is not None else (None,):
            known = self._refused.get(holder)
            if known is None:
                continue
            if now >= known.until:
                # Time to try again: the next call is a probe, and its answer decides.
                del self._refused[holder]
                continue
            known.skipped += 1
            if now - known.logged_at >= LOG_EVERY:
                known.logged_at = now
                self._log(known.source, known.status, holder, skipped=known.skipped)
                known.skipped = 0
            left = (known.until - now).total_seconds()
            raise CredentialsRefused(
                f"{known.source} refused chatbuffer's credentials ({known.status}); model calls "
                f"are paused for {left:.0f} s more",
                retry_after=left,
            )

    def _log(self, source: Source, status: int, account: int | None, *, skipped: int) -> None:
        setting = "CHATWOOT_API_TOKEN" if source == "Chatwoot" else "OPENAI_API_KEY"
        where = "every account" if account is None else f"account {account}"
        logger.error(
            "%s answered %d to chatbuffer's credentials: model calls for %s pause for %.0f s "
            "(%d skipped since the last report); check %s with `chatbuffer doctor`",
            source,
            status,
            where,
            self._backoff.total_seconds(),
            skipped,
            setting,
        )


class GuardedChatwoot:
    """Implements :class:`chatbuffer.domain.ports.ChatwootAPI`: ``chatwoot``, telling ``guard``
    for which accounts it refuses or takes the messages posted.

    Only posting counts: it is what a model call is paid for. The other calls may be refused to
    a bot whose token is good (Chatwoot before about 4.12 refuses bots the typing indicator and
    showing a conversation with the same 401), and typing is tried before the model is asked, so
    counting it would stop every answer on such a Chatwoot."""

    def __init__(self, chatwoot: ChatwootAPI, guard: CredentialGuard) -> None:
        self._chatwoot = chatwoot
        self._guard = guard

    async def _watched(self, key: ConversationKey, call: Awaitable[_T]) -> _T:
        try:
            result = await call
        except ChatwootError as exc:
            if exc.credentials_refused and exc.status is not None:
                self._guard.refused("Chatwoot", exc.status, key.account_id)
            raise
        self._guard.accepted("Chatwoot", key.account_id)
        return result

    async def set_typing(self, key: ConversationKey, *, on: bool) -> None:
        await self._chatwoot.set_typing(key, on=on)

    async def send_message(
        self,
        key: ConversationKey,
        content: str,
        *,
        private: bool = False,
        content_attributes: Mapping[str, Any] | None = None,
    ) -> int:
        return await self._watched(
            key,
            self._chatwoot.send_message(
                key, content, private=private, content_attributes=content_attributes
            ),
        )

    async def set_status(self, key: ConversationKey, status: str) -> None:
        await self._chatwoot.set_status(key, status)

    async def find_marked(
        self, key: ConversationKey, marker: markers.Marker, *, after_message_id: int | None
    ) -> int | None:
        return await self._chatwoot.find_marked(key, marker, after_message_id=after_message_id)


async def _model_call(
    guard: CredentialGuard, call: Callable[[], Awaitable[_T]], *, watch: bool
) -> _T:
    guard.check(current_account.get())
    try:
        result = await call()
    except DependencyError as exc:
        if watch and exc.credentials_refused and exc.status is not None:
            guard.refused("the model endpoint", exc.status, None)
        raise
    if watch:
        guard.accepted("the model endpoint", None)
    return result


class GuardedReplyModel:
    """Implements :class:`chatbuffer.domain.ports.ReplyModel`: skips the call while ``guard``
    says its answer could not be delivered, and tells it when the endpoint refuses the key."""

    def __init__(self, model: ReplyModel, guard: CredentialGuard) -> None:
        self._model = model
        self._guard = guard

    async def decide(self, prompt: Prompt) -> ModelDecision:
        return await _model_call(self._guard, lambda: self._model.decide(prompt), watch=True)


class GuardedSummarizer:
    """Implements :class:`chatbuffer.domain.ports.Summarizer` like ``GuardedReplyModel``."""

    def __init__(self, summarizer: Summarizer, guard: CredentialGuard) -> None:
        self._summarizer = summarizer
        self._guard = guard

    async def summarize(self, prompt: Prompt) -> str:
        return await _model_call(
            self._guard, lambda: self._summarizer.summarize(prompt), watch=True
        )


class GuardedTranscriber:
    """Implements :class:`chatbuffer.domain.ports.Transcriber`: no voice note is transcribed
    for an answer that cannot be delivered. Its refusals are not recorded: the transcription
    endpoint may have a key of its own."""

    def __init__(self, transcriber: Transcriber, guard: CredentialGuard) -> None:
        self._transcriber = transcriber
        self._guard = guard

    async def transcribe(self, attachment: Attachment) -> str:
        return await _model_call(
            self._guard, lambda: self._transcriber.transcribe(attachment), watch=False
        )


class AccountScopedPipeline(Pipeline):
    """The pipeline, with the buffer's account named for the guarded ports while it runs (the
    scheduler runs each buffer in a task of its own, so the name stays with that buffer)."""

    async def process(self, job: ClaimedJob, owner: str) -> None:
        current_account.set(job.key.account_id)
        await super().process(job, owner)
