"""Configuration from environment variables, validated once at start-up.

Only the CLI and ``app.py`` read settings; they pass plain values down. Every field is documented
in ``docs/configuration.md``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatbuffer.domain import control_words
from chatbuffer.domain.buffer import BufferPolicy
from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.history import HistoryPolicy
from chatbuffer.domain.smart_window import WindowPolicy
from chatbuffer.errors import ConfigurationError

CHATWOOT_STATUSES = frozenset({"open", "resolved", "pending", "snoozed"})

#: Buffers a worker holds per model call it may make, unless ``WORKER_CONCURRENCY`` says otherwise.
IN_FLIGHT_PER_MODEL_CALL = 1.25

Role = Literal["serve", "api", "worker", "migrate"]


class Settings(BaseSettings):
    """Every setting chatbuffer reads, with its default."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str = "sqlite:///./chatbuffer.db"
    database_pool_size: int = Field(20, ge=1, le=500)
    database_intake_batch: int = Field(64, ge=1, le=1000)

    message_buffer_duration_ms: int = Field(30_000, ge=0)
    max_buffer_size: int = Field(50, ge=1, le=10_000)
    max_buffer_age_ms: int = Field(300_000, ge=0)
    buffer_processing_interval_ms: int = Field(10_000, ge=100)
    # Smart windows (docs/smart-windows.md); each rule is a live flag, off by default.
    smart_window_min_ms: int = Field(8_000, ge=0)
    smart_window_fast_track_ms: int = Field(6_000, ge=0)
    smart_window_voice_extra_ms: int = Field(15_000, ge=0, le=300_000)

    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = None
    openai_model: str = "gpt-4o-mini"
    ai_processing_timeout_ms: int = Field(30_000, ge=100)
    # The provider's limits, per worker process (see worker/model_gate.py); the openai SDK's
    # connection pool holds 1,000 connections, hence the cap.
    ai_max_concurrency: int = Field(500, ge=1, le=1_000)
    ai_requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    transcription_enabled: bool = True
    transcription_backend: Literal["openai", "local"] = "openai"
    # Unset: the chat endpoint's (OPENAI_BASE_URL, OPENAI_API_KEY); see the properties below.
    transcription_base_url: str | None = None
    transcription_api_key: SecretStr | None = None
    transcription_model: str | None = None
    # The old name of TRANSCRIPTION_MODEL, still read (deprecated; see ``deprecations``).
    openai_transcription_model: str | None = None
    transcription_local_threads: int = Field(2, ge=1, le=64)
    transcription_local_cache_dir: Path | None = None
    # Bursts for any consumer: with a URL, a closed burst is POSTed there (signed with the
    # secret) instead of asking the model; see docs/burst-webhook.md.
    burst_webhook_url: str | None = None
    burst_webhook_secret: SecretStr | None = None
    burst_webhook_timeout_ms: int = Field(30_000, ge=100, le=600_000)
    attachment_max_bytes: int = Field(25 * 1024 * 1024, ge=1_024)
    attachment_timeout_ms: int = Field(15_000, ge=100)
    response_quality_threshold: float = Field(0.7, ge=0.0, le=1.0)
    ai_temperature: float = Field(0.3, ge=0.0, le=2.0)
    # Unset: not sent, the endpoint's own limit applies.
    ai_max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    ai_vision_enabled: bool = True
    # Images travel inside the request as base64 (a third larger); providers cap them near 20 MB.
    ai_image_max_bytes: int = Field(5 * 1024 * 1024, ge=1_024, le=20 * 1024 * 1024)
    file_text_max_chars: int = Field(20_000, ge=100, le=1_000_000)

    # The business's instructions and the prompt template: read once, at start-up.
    bot_instructions: str | None = None
    bot_instructions_file: Path | None = None
    bot_instructions_dir: Path | None = None
    prompt_template_file: Path | None = None

    chatwoot_base_url: str | None = None
    chatwoot_api_token: SecretStr | None = None
    # A user's token (an agent bot's may not list messages): fetches the history a conversation
    # had before chatbuffer. Unset: only what chatbuffer stored is history.
    chatwoot_user_token: SecretStr | None = None
    chatwoot_account_id: int | None = None
    chatwoot_webhook_secret: SecretStr | None = None
    chatwoot_typing_indicator_enabled: bool = True
    chatwoot_timeout_ms: int = Field(10_000, ge=100)
    # After a 401/403 from Chatwoot (for that account) or the model endpoint (for all), model
    # calls pause this long instead of writing answers that cannot be delivered; 0: never.
    credential_backoff_ms: int = Field(300_000, ge=0, le=86_400_000)

    bot_active_statuses: str = "pending"
    human_takeover_pause_ms: int = Field(3_600_000, ge=0)
    #: After `chatbuffer resume`, a burst whose last message is older than this goes to a human.
    pause_stale_after_ms: int = Field(600_000, ge=0)
    handoff_keywords: str = ", ".join(control_words.DEFAULT_KEYWORDS)

    # Unset: derived from AI_MAX_CONCURRENCY (see ``buffers_in_flight``).
    worker_concurrency: int | None = Field(None, ge=1, le=10_000)
    worker_lease_ms: int = Field(10_000, ge=1_000)
    worker_shutdown_grace_ms: int = Field(20_000, ge=0)
    max_processing_attempts: int = Field(5, ge=1, le=100)
    webhook_max_body_bytes: int = Field(1_048_576, ge=1_024)
    webhook_signature_max_age_s: int = Field(300, ge=1)
    history_limit: int = Field(20, ge=0, le=200)
    history_max_tokens: int = Field(2_000, ge=0, le=1_000_000)
    history_summary_every: int = Field(10, ge=0, le=200)
    # WhatsApp refuses a text over 4,096 characters; a longer reply goes out in parts.
    reply_max_chars: int = Field(4096, ge=100, le=100_000)
    # "typing…" before each further part: proportional to its length, capped.
    reply_pause_ms_per_char: float = Field(1.0, ge=0.0, le=1_000.0)
    reply_pause_max_ms: int = Field(3_000, ge=0, le=60_000)
    # Comma list of custom attribute names, "*" for all; phone_number and email only by name.
    contact_attributes_to_model: str = ""
    # Message text, sender data and replies are personal data: 0 keeps them forever.
    data_retention_days: int = Field(0, ge=0, le=36_500)
    admin_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Keep each buffer's model requests and answers (`chatbuffer buffers trace`).
    buffer_trace_enabled: bool = True

    @field_validator(
        "ai_max_tokens",
        "chatwoot_user_token",
        "bot_instructions",
        "bot_instructions_file",
        "bot_instructions_dir",
        "prompt_template_file",
        "transcription_base_url",
        "transcription_api_key",
        "transcription_model",
        "openai_transcription_model",
        "transcription_local_cache_dir",
        "burst_webhook_url",
        "burst_webhook_secret",
        "chatwoot_account_id",
        "chatwoot_webhook_secret",
        "admin_token",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # VAR= in a .env or compose file means "not set", not the current directory or zero.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("transcription_backend", "log_format", mode="before")
    @classmethod
    def _lower_backend(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. openssl rand -hex 32)")
        return value

    @field_validator("handoff_keywords")
    @classmethod
    def _control_words(cls, value: str) -> str:
        control_words.keywords(value)
        return value

    @field_validator("bot_active_statuses")
    @classmethod
    def _known_statuses(cls, value: str) -> str:
        statuses = [s.strip().lower() for s in value.split(",") if s.strip()]
        if not statuses:
            raise ValueError("must name at least one conversation status")
        unknown = sorted(set(statuses) - CHATWOOT_STATUSES)
        if unknown:
            raise ValueError(
                f"unknown status {', '.join(unknown)}; use {', '.join(sorted(CHATWOOT_STATUSES))}"
            )
        return ",".join(statuses)

    @field_validator(
        "openai_base_url", "chatwoot_base_url", "transcription_base_url", "burst_webhook_url"
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_buffer_age_ms < self.message_buffer_duration_ms:
            raise ValueError(
                "MAX_BUFFER_AGE_MS must be at least MESSAGE_BUFFER_DURATION_MS "
                f"({self.max_buffer_age_ms} < {self.message_buffer_duration_ms})"
            )
        if self.bot_instructions is not None and self.bot_instructions_file is not None:
            raise ValueError(
                "BOT_INSTRUCTIONS and BOT_INSTRUCTIONS_FILE are both set; set only one"
            )
        old, new = self.openai_transcription_model, self.transcription_model
        if old is not None and new is not None and old != new:
            raise ValueError(
                "TRANSCRIPTION_MODEL and OPENAI_TRANSCRIPTION_MODEL (its deprecated old name) "
                "differ; set only TRANSCRIPTION_MODEL"
            )
        return self

    @property
    def transcription_url(self) -> str:
        """The transcription endpoint: ``TRANSCRIPTION_BASE_URL``, else the chat endpoint."""
        return self.transcription_base_url or self.openai_base_url

    @property
    def transcription_key(self) -> SecretStr | None:
        """``TRANSCRIPTION_API_KEY``, else the chat endpoint's key."""
        return self.transcription_api_key or self.openai_api_key

    @property
    def transcription_model_name(self) -> str:
        """The model the transcription endpoint is asked for."""
        return self.transcription_model or self.openai_transcription_model or "whisper-1"

    @property
    def local_model_dir(self) -> Path | None:
        """``TRANSCRIPTION_BACKEND=local``: a model directory of the operator's, or None for the
        one the extra installs. The deprecated name is not read here: it names hosted models."""
        return Path(self.transcription_model) if self.transcription_model else None

    @property
    def deprecations(self) -> list[str]:
        """Warnings to log at start-up about settings read under an old name."""
        if self.openai_transcription_model is None:
            return []
        return [
            "OPENAI_TRANSCRIPTION_MODEL is deprecated and will be removed: "
            "set TRANSCRIPTION_MODEL instead (same meaning)"
        ]

    @property
    def history_policy(self) -> HistoryPolicy:
        return HistoryPolicy(
            max_turns=self.history_limit,
            max_tokens=self.history_max_tokens,
            summary_every=self.history_summary_every,
        )

    @property
    def attribute_selection(self) -> AttributeSelection:
        return AttributeSelection.parse(self.contact_attributes_to_model)

    @property
    def active_statuses(self) -> frozenset[str]:
        return frozenset(self.bot_active_statuses.split(","))

    @property
    def window_policy(self) -> WindowPolicy:
        """The smart windows' bounds, every rule off (the live flags turn them on)."""
        return WindowPolicy(
            base_ms=self.message_buffer_duration_ms,
            min_ms=min(self.smart_window_min_ms, self.message_buffer_duration_ms),
            fast_track_ms=self.smart_window_fast_track_ms,
            voice_extra_ms=self.smart_window_voice_extra_ms,
        )

    @property
    def handoff_words(self) -> frozenset[str]:
        """``HANDOFF_KEYWORDS`` as compared (empty: control words are off)."""
        return control_words.keywords(self.handoff_keywords)

    @property
    def buffer_policy(self) -> BufferPolicy:
        return BufferPolicy(
            quiet_period=timedelta(milliseconds=self.message_buffer_duration_ms),
            max_age=timedelta(milliseconds=self.max_buffer_age_ms),
            max_size=self.max_buffer_size,
        )

    @property
    def buffers_in_flight(self) -> int:
        """How many buffers one worker holds at once: ``WORKER_CONCURRENCY``, or by default a
        quarter more than the model calls it may make, so the model slots stay busy while other
        buffers load, check, post and complete. Many more only queue for the database and hold
        leases another worker could use (measured in docs/performance.md)."""
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        return round(IN_FLIGHT_PER_MODEL_CALL * self.ai_max_concurrency)

    @property
    def retention(self) -> timedelta | None:
        """How long finished buffers are kept, or None to keep them forever."""
        return timedelta(days=self.data_retention_days) if self.data_retention_days else None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.lower().startswith("sqlite")

    def require_for(self, role: Role) -> None:
        """Stop start-up when a setting this role needs is missing."""
        needed: list[tuple[str, object]] = []
        if role in {"serve", "worker"}:
            if self.burst_webhook_url is None:
                needed.append(("OPENAI_API_KEY", self.openai_api_key))
            else:
                # Unsigned bursts would let anyone who learns the URL answer for the business.
                needed.append(("BURST_WEBHOOK_SECRET", self.burst_webhook_secret))
            needed += [
                ("CHATWOOT_BASE_URL", self.chatwoot_base_url),
                ("CHATWOOT_API_TOKEN", self.chatwoot_api_token),
            ]
        for name, value in needed:
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
                raise ConfigurationError(f"{name} is not set; the {role} command needs it")


def load_settings(**overrides: object) -> Settings:
    """Read the environment; turn validation errors into one line that names the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = error.get("loc") or ()
        name = str(where[0]).upper() if where else "configuration"
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if name == "configuration" or not where:
            raise ConfigurationError(f"invalid configuration: {message}") from None
        raise ConfigurationError(f"{name} is invalid: {message}") from None
