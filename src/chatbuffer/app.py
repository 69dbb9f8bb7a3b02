"""The composition root: the one place that connects ports to adapters.

``Runtime`` owns every resource (engine, HTTP clients, worker tasks); ``open()`` and ``close()``
bracket its life, and ``close()`` runs even when ``open()`` failed half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import openai
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.ai.openai_model import OpenAIReplyModel, OpenAISummarizer
from chatbuffer.burst_webhook.client import BurstWebhookClient
from chatbuffer.chatwoot.client import ChatwootClient
from chatbuffer.chatwoot.history import ChatwootHistory
from chatbuffer.clock import SystemClock
from chatbuffer.domain.aggregation import Prompt
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.control import Controls, subject_of
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.instructions import BotInstructions
from chatbuffer.domain.model import ConversationKey, InboundMessage
from chatbuffer.domain.ports import (
    AttachmentReader,
    BufferSummary,
    BurstArchive,
    BurstConsumer,
    ChatwootAPI,
    Clock,
    HistorySource,
    Observer,
    ReplayResult,
    ReplyModel,
    StoredBurst,
    Summarizer,
    Transcriber,
)
from chatbuffer.domain.retry import RetryPolicy
from chatbuffer.errors import ConfigurationError, StorageUnavailable
from chatbuffer.flags import CachedControls
from chatbuffer.intake.webhook import IntakeRules, WebhookIntake
from chatbuffer.intake.windows import SmartWindows
from chatbuffer.observability import turns
from chatbuffer.observability.events import FanOut, LoggingObserver
from chatbuffer.observability.measured import (
    MeasuredChatwoot,
    MeasuredHistory,
    MeasuredIntake,
    MeasuredReplyModel,
    MeasuredStore,
    token_counter,
)
from chatbuffer.observability.metrics import CONTENT_TYPE, Metrics, MetricsObserver
from chatbuffer.observability.tracing import TracedReplyModel
from chatbuffer.observability.turns import BufferLogObserver
from chatbuffer.prompting.loading import load_instructions, load_template
from chatbuffer.prompting.template import PromptTemplate
from chatbuffer.settings import Settings
from chatbuffer.storage import database, gauges, retention
from chatbuffer.storage.bot_states import SqlBotStates
from chatbuffer.storage.controls import SqlControls
from chatbuffer.storage.listener import PgWakeListener
from chatbuffer.storage.repository import SqlBufferStore
from chatbuffer.storage.smart_windows import SqlWindowStates
from chatbuffer.storage.subjects import SqlSubjects
from chatbuffer.storage.traces import SqlTraceLog
from chatbuffer.storage.transcripts import SqlBurstArchive
from chatbuffer.transcription.fetch import AttachmentFetcher
from chatbuffer.transcription.local_transcriber import (
    LocalTranscriber,
    WhisperEngine,
    check_available,
)
from chatbuffer.transcription.openai_transcriber import OpenAITranscriber
from chatbuffer.transcription.packaged_model import default_cache_root
from chatbuffer.transcription.reading import ChatwootAttachmentReader
from chatbuffer.web.asgi import WebConfig, create_asgi_app
from chatbuffer.worker.asking import Asker
from chatbuffer.worker.controls import ControlledChatwoot, PausableQueue, StaleBursts
from chatbuffer.worker.credentials import (
    AccountScopedPipeline,
    CredentialGuard,
    GuardedChatwoot,
    GuardedReplyModel,
    GuardedSummarizer,
    GuardedTranscriber,
)
from chatbuffer.worker.model_gate import (
    GatedReplyModel,
    GatedSummarizer,
    GatedTranscriber,
    ModelGate,
)
from chatbuffer.worker.pipeline import PipelineConfig
from chatbuffer.worker.scheduler import Scheduler, SchedulerConfig
from chatbuffer.worker.waker import Waker

logger = logging.getLogger(__name__)

#: Beyond the Chatwoot timeout, how long a reserved send keeps its lease: the round trips that
#: reserve before and record after the POST.
SEND_MARGIN = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class PromptFiles:
    """The operator's prompt files, read once at start-up."""

    template: PromptTemplate
    instructions: BotInstructions


def load_prompt_files(settings: Settings) -> PromptFiles:
    """``PROMPT_TEMPLATE_FILE`` and the business's instructions; a ``ConfigurationError`` that
    names the setting and the file when one cannot be used."""
    return PromptFiles(
        template=load_template(settings.prompt_template_file),
        instructions=load_instructions(
            settings.bot_instructions,
            settings.bot_instructions_file,
            settings.bot_instructions_dir,
        ),
    )


def check_transcription(settings: Settings) -> None:
    """Stop start-up with one line when the chosen transcriber cannot run on this machine (the
    ``local`` backend without the ``local-asr`` extra, an unusable model or cache directory)."""
    if settings.transcription_enabled and settings.transcription_backend == "local":
        check_available(model_dir=settings.local_model_dir, cache_root=_cache_root(settings))


def _cache_root(settings: Settings) -> Path:
    return settings.transcription_local_cache_dir or default_cache_root()


@dataclass(frozen=True, slots=True)
class _Adapters:
    chatwoot: ChatwootAPI
    model: ReplyModel
    transcriber: Transcriber | None
    asker: Asker
    #: Builds the exact request body (``chatbuffer prompt show``).
    openai_model: OpenAIReplyModel
    summarizer: Summarizer
    #: The history Chatwoot had before chatbuffer (``CHATWOOT_USER_TOKEN``), or None.
    earlier: HistorySource | None


class Runtime:
    """Everything one chatbuffer process runs, wired from ``Settings``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
        chatwoot: ChatwootAPI | None = None,
        model: ReplyModel | None = None,
        transcriber: Transcriber | None = None,
        reader: AttachmentReader | None = None,
        prompt_files: PromptFiles | None = None,
        summarizer: Summarizer | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._clock_injected = clock is not None
        self.metrics = Metrics(self.clock)
        self.observer = FanOut(
            [
                LoggingObserver(),
                MetricsObserver(self.metrics, settings.buffer_policy),
                BufferLogObserver(self.clock, self.metrics),
                *observers,
            ]
        )
        self._measured_intake = MeasuredIntake(self._handle_webhook, self.metrics)
        self._chatwoot = chatwoot
        self._model = model
        self._transcriber = transcriber
        self._reader = reader
        self._prompt_files = prompt_files
        self._summarizer = summarizer
        self._built: _Adapters | None = None
        self._engine: AsyncEngine | None = None
        self._heartbeat_engine: AsyncEngine | None = None
        self._store: SqlBufferStore | None = None
        self._measured_store: SqlBufferStore | None = None
        self._bot_states: SqlBotStates | None = None
        self._owned: list[
            ChatwootClient
            | ChatwootHistory
            | BurstWebhookClient
            | OpenAIReplyModel
            | AttachmentFetcher
            | OpenAITranscriber
        ] = []
        self.waker = Waker(self.clock)
        self._intake: WebhookIntake | None = None

    @property
    def bot_states(self) -> SqlBotStates:
        if self._bot_states is None:
            raise RuntimeError("Runtime is not open")
        return self._bot_states

    @property
    def store(self) -> SqlBufferStore:
        """The store; each of its operations is timed (``chatbuffer_db_statement_duration``)."""
        if self._measured_store is None:
            raise RuntimeError("Runtime is not open")
        return self._measured_store

    async def open(self) -> None:
        self._engine = database.create_engine(
            self.settings.database_url, pool_size=self.settings.database_pool_size
        )
        # The heartbeats' own connection (opened on first use, so an api process never does):
        # a lease must not wait behind busy buffers and webhooks for a pooled one.
        self._heartbeat_engine = database.create_engine(self.settings.database_url, pool_size=1)
        # Leases and due times go by PostgreSQL's clock, unless a clock was injected (tests and
        # the demo drive time through it).
        self._store = SqlBufferStore(
            self._engine,
            database_clock=self._clock_injected is False,
            heartbeat_engine=self._heartbeat_engine,
            intake_batch=self.settings.database_intake_batch,
        )
        # The measured store has every method of the real one (it forwards them).
        self._measured_store = cast(
            SqlBufferStore, MeasuredStore(self._store, self.metrics, self.clock)
        )
        engine = self._engine
        self.metrics.gauges.connect(lambda now: gauges.buffer_counts(engine, now))
        self._flags = CachedControls(SqlControls(self._engine), self.clock)
        self._windows = SmartWindows(SqlWindowStates(self._engine), self.settings.window_policy)
        self._bot_states = SqlBotStates(self._engine)
        await database.check_schema(self._engine, self.settings.database_url)
        self._intake = self._build_intake()

    async def close(self) -> None:
        for resource in reversed(self._owned):
            with contextlib.suppress(Exception):
                await resource.aclose()
        self._owned.clear()
        self._built = None
        for engine in (self._heartbeat_engine, self._engine):
            if engine is not None:
                await engine.dispose()
        self._engine = self._heartbeat_engine = None
        self.metrics.gauges.connect(None)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Runtime]:
        try:
            await self.open()
            yield self
        finally:
            await self.close()

    # -- intake ---------------------------------------------------------------------------

    async def buffer_policy(self, message: InboundMessage) -> BufferPolicy:
        """The buffered path's policy, or the immediate path's (each message answered at once)
        when ``message_buffering`` is off for the conversation or the rollout leaves it out."""
        policy = self.settings.buffer_policy
        controls = await self._flags.current()
        if not controls.buffered(subject_of(message)):
            return policy.without_waiting()
        return await self._windows.policy(message, policy, controls)

    async def current_controls(self) -> Controls:
        return await self._flags.current()

    async def handle_webhook(self, body: object) -> Mapping[str, Any]:
        return await self._measured_intake(body)

    async def metrics_page(self) -> tuple[bytes, str]:
        """``GET /metrics``: this process's metrics and the database's buffer counts."""
        return await self.metrics.render(), CONTENT_TYPE

    async def _handle_webhook(self, body: object) -> Mapping[str, Any]:
        if self._intake is None:
            raise RuntimeError("Runtime is not open")
        try:
            return await self._intake.handle(body)
        except (SQLAlchemyError, OSError) as exc:
            # The transaction did not commit: the sender must retry, and the operator needs one
            # line, not a traceback per webhook while the database restarts.
            raise StorageUnavailable(f"the database is unavailable ({type(exc).__name__})") from exc

    async def ping(self) -> None:
        await self.store.ping()

    # The admin API reaches the store through the runtime, which opens it in the app's lifespan.

    async def list_buffers(
        self, status: str, limit: int, key: ConversationKey | None = None
    ) -> list[BufferSummary]:
        return await self.store.list_buffers(status, limit, key)

    async def replay(
        self, buffer_id: uuid.UUID, now: datetime
    ) -> tuple[ReplayResult, BufferSummary | None]:
        return await self.store.replay(buffer_id, now)

    def control_access(self) -> SqlControls:
        if self._engine is None:
            raise RuntimeError("Runtime is not open")
        return SqlControls(self._engine)

    async def stored_burst(self, buffer_id: uuid.UUID) -> StoredBurst | None:
        return await self.archive().burst(buffer_id, history_limit=0)

    def _build_intake(self) -> WebhookIntake:
        return WebhookIntake(
            store=self.store,
            sends=self.store,
            clock=self.clock,
            observer=self.observer,
            rules=IntakeRules(
                active_statuses=self.settings.active_statuses,
                account_id=self.settings.chatwoot_account_id,
                attributes=self.settings.attribute_selection,
                handoff_keywords=self.settings.handoff_words,
            ),
            policy=self.buffer_policy,
            on_scheduled=self.waker.poke,
            human_pause=timedelta(milliseconds=self.settings.human_takeover_pause_ms),
            bot_states=self.bot_states,
        )

    def asgi(self, *, with_worker: bool) -> FastAPI:
        """The web app; its lifespan opens this runtime (and runs the worker in ``serve``)."""
        secret = self.settings.chatwoot_webhook_secret
        admin_token = self.settings.admin_token

        @asynccontextmanager
        async def lifespan() -> AsyncIterator[None]:
            async with self.opened():
                if not with_worker:
                    yield
                    return
                async with self.worker_running():
                    yield

        return create_asgi_app(
            handle=self.handle_webhook,
            ping=self.ping,
            clock=self.clock,
            config=WebConfig(
                webhook_secret=secret.get_secret_value() if secret else None,
                max_body_bytes=self.settings.webhook_max_body_bytes,
                signature_max_age_s=self.settings.webhook_signature_max_age_s,
                admin_token=admin_token.get_secret_value() if admin_token else None,
            ),
            lifespan=lifespan,
            admin=self,
            controls=self.current_controls,
            control_access=self.control_access,
            buffers=self,
            metrics=self.metrics_page,
            on_rejected=self._measured_intake.rejected,
        )

    # -- worker ---------------------------------------------------------------------------

    @property
    def prompt_files(self) -> PromptFiles:
        if self._prompt_files is None:
            self._prompt_files = load_prompt_files(self.settings)
        return self._prompt_files

    def _adapters(self) -> _Adapters:
        if self._built is None:
            self._built = self._build_adapters()
        return self._built

    def _build_adapters(self) -> _Adapters:
        s = self.settings
        files = self.prompt_files
        # One guard for the process: a token Chatwoot refuses, or a key the model endpoint
        # refuses, pauses the model calls whose answers could not be delivered.
        refused = self.metrics.credential_refused
        guard = CredentialGuard(
            self.clock,
            backoff=timedelta(milliseconds=s.credential_backoff_ms),
            on_refused=lambda source: refused.labels(
                service="chatwoot" if source == "Chatwoot" else "model"
            ).inc(),
        )
        chatwoot = self._chatwoot
        if chatwoot is None:
            if s.chatwoot_base_url is None or s.chatwoot_api_token is None:
                raise ConfigurationError("CHATWOOT_BASE_URL and CHATWOOT_API_TOKEN are required")
            client = ChatwootClient(
                base_url=s.chatwoot_base_url,
                api_token=s.chatwoot_api_token.get_secret_value(),
                timeout_s=s.chatwoot_timeout_ms / 1000,
            )
            self._owned.append(client)
            chatwoot = client
        chatwoot = MeasuredChatwoot(chatwoot, self.metrics, self.clock)
        if s.openai_api_key is None and s.burst_webhook_url is None:
            raise ConfigurationError("OPENAI_API_KEY is required")
        # One connection pool for the model and the transcriptions; the SDK's own retries are
        # off because the worker owns retries. With a burst webhook and no key the model is never
        # asked; transcription then needs its own key (or the local backend).
        openai_client = openai.AsyncOpenAI(
            base_url=s.openai_base_url,
            api_key=s.openai_api_key.get_secret_value() if s.openai_api_key else "not-set",
            timeout=s.ai_processing_timeout_ms / 1000,
            max_retries=0,
        )
        openai_model = OpenAIReplyModel(
            model=s.openai_model,
            client=openai_client,
            temperature=s.ai_temperature,
            max_tokens=s.ai_max_tokens,
            on_usage=token_counter(self.metrics),
            on_answer=turns.note_raw_answer,
        )
        self._owned.append(openai_model)
        # One gate for the whole process, shared by replies and transcriptions: both spend the
        # same endpoint's limits.
        gate = ModelGate(
            self.clock,
            max_concurrency=s.ai_max_concurrency,
            requests_per_minute=s.ai_requests_per_minute,
        )
        # Measured inside the gate: the request's own duration, not its wait for a turn.
        model: ReplyModel = self._model or openai_model
        if s.buffer_trace_enabled and self._engine is not None:
            request_of = openai_model.request if self._model is None else None
            model = TracedReplyModel(model, SqlTraceLog(self._engine), self.clock, request_of)
        model = GuardedReplyModel(
            GatedReplyModel(MeasuredReplyModel(model, self.metrics, self.clock), gate), guard
        )
        fetcher: AttachmentFetcher | None = None
        if s.chatwoot_base_url:
            fetcher = AttachmentFetcher(
                chatwoot_base_url=s.chatwoot_base_url,
                max_bytes=s.attachment_max_bytes,
                timeout_s=s.attachment_timeout_ms / 1000,
            )
            self._owned.append(fetcher)
        transcriber: Transcriber | None = None
        if self._transcriber is not None:
            transcriber = GatedTranscriber(self._transcriber, gate)
        elif s.transcription_enabled and fetcher is not None:
            transcriber = self._build_transcriber(fetcher, openai_client, gate)
        if transcriber is not None:
            transcriber = GuardedTranscriber(transcriber, guard)
        reader = self._reader
        if reader is None and fetcher is not None:
            reader = ChatwootAttachmentReader(
                fetcher=fetcher,
                image_max_bytes=s.ai_image_max_bytes,
                text_max_chars=s.file_text_max_chars,
            )
        consumer: BurstConsumer | None = None
        if s.burst_webhook_url is not None and s.burst_webhook_secret is not None:
            webhook = BurstWebhookClient(
                url=s.burst_webhook_url,
                secret=s.burst_webhook_secret.get_secret_value(),
                clock=self.clock,
                timeout_s=s.burst_webhook_timeout_ms / 1000,
            )
            self._owned.append(webhook)
            consumer = webhook
        asker = Asker(
            model=model,
            template=files.template,
            reader=reader,
            instructions=files.instructions,
            vision=s.ai_vision_enabled,
            attributes=s.attribute_selection,
            consumer=consumer,
        )
        summarizer = GuardedSummarizer(
            GatedSummarizer(
                self._summarizer
                or OpenAISummarizer(
                    model=s.openai_model,
                    client=openai_client,
                    on_usage=token_counter(self.metrics),
                ),
                gate,
            ),
            guard,
        )
        earlier: HistorySource | None = None
        if s.chatwoot_user_token is not None and s.chatwoot_base_url is not None:
            history = ChatwootHistory(
                base_url=s.chatwoot_base_url,
                user_token=s.chatwoot_user_token.get_secret_value(),
                timeout_s=s.chatwoot_timeout_ms / 1000,
            )
            self._owned.append(history)
            earlier = MeasuredHistory(history, self.metrics, self.clock)
        return _Adapters(
            GuardedChatwoot(chatwoot, guard),
            model,
            transcriber,
            asker,
            openai_model,
            summarizer,
            earlier,
        )

    def _build_transcriber(
        self, fetcher: AttachmentFetcher, chat_client: openai.AsyncOpenAI, chat_gate: ModelGate
    ) -> Transcriber:
        s = self.settings
        if s.transcription_backend == "local":
            # Not behind a model gate: it spends this machine's cores, not an endpoint's limits.
            engine = WhisperEngine(
                model_dir=s.local_model_dir,
                cache_root=_cache_root(s),
                threads=s.transcription_local_threads,
            )
            return LocalTranscriber(fetcher=fetcher, engine=engine.transcribe)
        key = s.transcription_key
        if s.transcription_url == s.openai_base_url and key == s.openai_api_key:
            # The chat endpoint: the same connection pool, and the same gate, since both spend
            # the same limits and a 429 on either pauses both.
            return GatedTranscriber(
                OpenAITranscriber(
                    client=chat_client, model=s.transcription_model_name, fetcher=fetcher
                ),
                chat_gate,
            )
        # An endpoint of its own (or another account on the same one): its own client, and its
        # own gate, so its rate limits never pause the replies. AI_REQUESTS_PER_MINUTE is the
        # chat provider's limit and does not apply here.
        own = OpenAITranscriber(
            client=openai.AsyncOpenAI(
                base_url=s.transcription_url,
                api_key=key.get_secret_value() if key else "",
                timeout=s.ai_processing_timeout_ms / 1000,
                max_retries=0,
            ),
            model=s.transcription_model_name,
            fetcher=fetcher,
        )
        self._owned.append(own)
        return GatedTranscriber(own, ModelGate(self.clock, max_concurrency=s.ai_max_concurrency))

    def transcriber(self) -> Transcriber | None:
        """What the worker turns voice notes into text with (None when it does not)."""
        return self._adapters().transcriber

    # -- the prompt, for operators (`chatbuffer prompt show` / `try`) ----------------------

    def asker(self) -> Asker:
        """What the worker asks the model with: the same template, instructions, reader."""
        return self._adapters().asker

    def model_request(self, prompt: Prompt) -> dict[str, Any]:
        """The exact body the service sends the model for ``prompt``."""
        return self._adapters().openai_model.request(prompt)

    def archive(self) -> BurstArchive:
        if self._engine is None:
            raise RuntimeError("Runtime is not open")
        return SqlBurstArchive(self._engine)

    async def include_history(self, key: ConversationKey) -> bool:
        return await self._flags.is_enabled(Flag.ENHANCED_AI_PROCESSING, key)

    def scheduler(self) -> Scheduler:
        s = self.settings
        adapters = self._adapters()
        # The kill switch and shadow mode: every bot action goes through the live controls.
        chatwoot = ControlledChatwoot(
            adapters.chatwoot, self._flags, SqlSubjects(self.store.engine)
        )
        pipeline = AccountScopedPipeline(
            history=self.store,
            ledger=self.store,
            flags=self._flags,
            chatwoot=chatwoot,
            model=adapters.model,
            clock=self.clock,
            observer=self.observer,
            transcriber=adapters.transcriber,
            asker=adapters.asker,
            memory=self.store,
            earlier=adapters.earlier,
            summarizer=adapters.summarizer,
            stale=StaleBursts(self._flags, timedelta(milliseconds=s.pause_stale_after_ms)),
            bot_states=self.bot_states,
            config=PipelineConfig(
                quality_threshold=s.response_quality_threshold,
                typing_enabled=s.chatwoot_typing_indicator_enabled,
                history_limit=s.history_limit,
                history_max_tokens=s.history_max_tokens,
                summary_every=s.history_summary_every,
                reply_max_chars=s.reply_max_chars,
                pause_per_char=timedelta(milliseconds=s.reply_pause_ms_per_char),
                pause_max=timedelta(milliseconds=s.reply_pause_max_ms),
                retry=RetryPolicy(max_attempts=s.max_processing_attempts),
                policy=s.buffer_policy,
                send_hold=timedelta(milliseconds=s.chatwoot_timeout_ms) + SEND_MARGIN,
                handoff_keywords=s.handoff_words,
            ),
        )
        return Scheduler(
            queue=PausableQueue(self.store, self._flags),
            pipeline=pipeline,
            clock=self.clock,
            waker=self.waker,
            config=SchedulerConfig(
                concurrency=s.buffers_in_flight,
                lease=timedelta(milliseconds=s.worker_lease_ms),
                sweep_interval=timedelta(milliseconds=s.buffer_processing_interval_ms),
                shutdown_grace=timedelta(milliseconds=s.worker_shutdown_grace_ms),
                # PostgreSQL's NOTIFY (worker_running's listener) tells of released buffers.
                wake_on_finish=s.is_sqlite,
            ),
        )

    @asynccontextmanager
    async def worker_running(self) -> AsyncIterator[Scheduler]:
        """Run the scheduler (and the PostgreSQL listener) until the block exits, then drain."""
        scheduler = self.scheduler()
        # What the process allocated until now (modules, settings, clients: 170,000 objects in
        # the benchmark) lives as long as it does, and a full collection that walks it all
        # pauses every buffer in flight (measured: 100-150 ms, the p99 at 100 bursts/s).
        # Frozen, the collector walks only what the worker allocates from here on.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(scheduler.run(stop), name="scheduler")]
        if not self.settings.is_sqlite:
            conninfo = database.psycopg_conninfo(self.settings.database_url)
            wake_ups = PgWakeListener(conninfo, self.clock)
            tasks.append(asyncio.create_task(wake_ups.listen(self.waker.poke), name="listener"))
        if self.settings.retention is not None:
            tasks.append(
                asyncio.create_task(
                    retention.purge_periodically(
                        self.store.engine, self.clock, self.settings.retention
                    ),
                    name="retention",
                )
            )
        try:
            yield scheduler
        finally:
            stop.set()
            self.waker.poke()
            # The scheduler returns after finishing its in-flight buffers; the listener and
            # the purge have nothing to finish (a purge batch cut short rolls back).
            for task in tasks[1:]:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            gc.unfreeze()
