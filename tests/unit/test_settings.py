from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.history import HistoryPolicy
from chatbuffer.errors import ConfigurationError
from chatbuffer.settings import Settings, load_settings

ENV = [
    "DATABASE_URL",
    "MESSAGE_BUFFER_DURATION_MS",
    "MAX_BUFFER_AGE_MS",
    "MAX_BUFFER_SIZE",
    "BOT_ACTIVE_STATUSES",
    "OPENAI_API_KEY",
    "CHATWOOT_BASE_URL",
    "CHATWOOT_API_TOKEN",
    "RESPONSE_QUALITY_THRESHOLD",
    "WORKER_CONCURRENCY",
    "AI_MAX_CONCURRENCY",
    "AI_REQUESTS_PER_MINUTE",
    "AI_TEMPERATURE",
    "AI_MAX_TOKENS",
    "AI_VISION_ENABLED",
    "AI_IMAGE_MAX_BYTES",
    "FILE_TEXT_MAX_CHARS",
    "BOT_INSTRUCTIONS",
    "BOT_INSTRUCTIONS_FILE",
    "BOT_INSTRUCTIONS_DIR",
    "PROMPT_TEMPLATE_FILE",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_plan() -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///./chatbuffer.db"
    assert s.buffer_policy.quiet_period == timedelta(seconds=30)
    assert s.buffer_policy.max_age == timedelta(seconds=300)
    assert s.buffer_policy.max_size == 50
    assert s.buffer_processing_interval_ms == 10_000
    assert s.ai_processing_timeout_ms == 30_000
    assert s.response_quality_threshold == 0.7
    assert s.chatwoot_typing_indicator_enabled is True
    assert s.active_statuses == frozenset({"pending"})


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGE_BUFFER_DURATION_MS", "1500")
    monkeypatch.setenv("BOT_ACTIVE_STATUSES", "pending, open")
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot@db:5432/chatbuffer")
    s = load_settings()
    assert s.buffer_policy.quiet_period == timedelta(milliseconds=1500)
    assert s.active_statuses == frozenset({"pending", "open"})
    assert not s.is_sqlite


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MESSAGE_BUFFER_DURATION_MS", "soon", "MESSAGE_BUFFER_DURATION_MS is invalid"),
        ("MAX_BUFFER_SIZE", "0", "MAX_BUFFER_SIZE is invalid"),
        ("BOT_ACTIVE_STATUSES", "pending,waiting", "unknown status waiting"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL is invalid"),
        ("RESPONSE_QUALITY_THRESHOLD", "1.5", "RESPONSE_QUALITY_THRESHOLD is invalid"),
        ("CHATWOOT_BASE_URL", "chatwoot.local", "CHATWOOT_BASE_URL is invalid"),
        ("ADMIN_TOKEN", "short-secret", "ADMIN_TOKEN is invalid: must be at least 16"),
        ("AI_MAX_CONCURRENCY", "0", "AI_MAX_CONCURRENCY is invalid"),
        ("AI_MAX_CONCURRENCY", "5000", "AI_MAX_CONCURRENCY is invalid"),
        ("AI_REQUESTS_PER_MINUTE", "0", "AI_REQUESTS_PER_MINUTE is invalid"),
        ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY is invalid"),
        ("AI_TEMPERATURE", "2.5", "AI_TEMPERATURE is invalid"),
        ("AI_TEMPERATURE", "warm", "AI_TEMPERATURE is invalid"),
        ("AI_MAX_TOKENS", "0", "AI_MAX_TOKENS is invalid"),
        ("AI_VISION_ENABLED", "maybe", "AI_VISION_ENABLED is invalid"),
        ("AI_IMAGE_MAX_BYTES", "100", "AI_IMAGE_MAX_BYTES is invalid"),
        ("AI_IMAGE_MAX_BYTES", "50000000", "AI_IMAGE_MAX_BYTES is invalid"),
        ("FILE_TEXT_MAX_CHARS", "10", "FILE_TEXT_MAX_CHARS is invalid"),
    ],
)
def test_bad_values_stop_with_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_model_limits_bound_the_worker_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = load_settings()
    # The provider's limit is what bounds model calls; buffers in flight follow it.
    assert (s.ai_max_concurrency, s.ai_requests_per_minute) == (500, None)
    assert s.buffers_in_flight == 625
    monkeypatch.setenv("AI_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("AI_REQUESTS_PER_MINUTE", "500")
    s = load_settings()
    assert (s.buffers_in_flight, s.ai_requests_per_minute) == (10, 500)
    monkeypatch.setenv("WORKER_CONCURRENCY", "64")
    assert load_settings().buffers_in_flight == 64


def test_contradictory_window_and_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGE_BUFFER_DURATION_MS", "60000")
    monkeypatch.setenv("MAX_BUFFER_AGE_MS", "30000")
    with pytest.raises(ConfigurationError, match="MAX_BUFFER_AGE_MS must be at least"):
        load_settings()


def test_worker_roles_need_credentials_the_api_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    s.require_for("api")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY is not set"):
        s.require_for("serve")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("CHATWOOT_BASE_URL", "https://chatwoot.example")
    with pytest.raises(ConfigurationError, match="CHATWOOT_API_TOKEN is not set"):
        load_settings().require_for("worker")


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("CHATWOOT_API_TOKEN", "cw-very-secret")
    text = repr(load_settings())
    assert "sk-very-secret" not in text and "cw-very-secret" not in text


def test_personal_data_is_kept_until_a_retention_period_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATA_RETENTION_DAYS", raising=False)
    assert load_settings().retention is None
    monkeypatch.setenv("DATA_RETENTION_DAYS", "30")
    assert load_settings().retention == timedelta(days=30)
    monkeypatch.setenv("DATA_RETENTION_DAYS", "-1")
    with pytest.raises(ConfigurationError, match="DATA_RETENTION_DAYS"):
        load_settings()


def test_the_prompts_settings_default_to_the_seeds_request(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.ai_temperature, s.ai_max_tokens, s.ai_vision_enabled) == (0.3, None, True)
    assert (s.ai_image_max_bytes, s.file_text_max_chars) == (5 * 1024 * 1024, 20_000)
    assert (s.bot_instructions, s.bot_instructions_file, s.prompt_template_file) == (None,) * 3
    # VAR= in an env file means unset.
    monkeypatch.setenv("AI_MAX_TOKENS", "")
    monkeypatch.setenv("BOT_INSTRUCTIONS_FILE", " ")
    s = load_settings()
    assert (s.ai_max_tokens, s.bot_instructions_file) == (None, None)


def test_instructions_come_from_text_or_a_file_not_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_INSTRUCTIONS", "We sell bikes.")
    monkeypatch.setenv("BOT_INSTRUCTIONS_FILE", "/etc/bot.md")
    with pytest.raises(ConfigurationError, match="both set; set only one") as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_every_setting_is_documented_in_configuration_md() -> None:
    documented = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in documented]
    assert missing == []


def test_the_history_and_contact_settings() -> None:
    s = load_settings(
        HISTORY_LIMIT="8",
        HISTORY_MAX_TOKENS="500",
        HISTORY_SUMMARY_EVERY="0",
        CONTACT_ATTRIBUTES_TO_MODEL="plan, email,*",
        CHATWOOT_USER_TOKEN="",
    )
    assert s.history_policy == HistoryPolicy(max_turns=8, max_tokens=500, summary_every=0)
    assert s.attribute_selection == AttributeSelection(frozenset({"plan", "email"}), every=True)
    assert s.chatwoot_user_token is None
    with pytest.raises(ConfigurationError, match="HISTORY_SUMMARY_EVERY is invalid"):
        load_settings(HISTORY_SUMMARY_EVERY="-1")
