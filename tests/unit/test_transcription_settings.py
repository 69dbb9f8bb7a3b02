"""Which endpoint, key and model voice notes go to, and the local backend's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbuffer.errors import ConfigurationError
from chatbuffer.settings import load_settings

ENV = [
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "TRANSCRIPTION_ENABLED",
    "TRANSCRIPTION_BACKEND",
    "TRANSCRIPTION_BASE_URL",
    "TRANSCRIPTION_API_KEY",
    "TRANSCRIPTION_MODEL",
    "OPENAI_TRANSCRIPTION_MODEL",
    "TRANSCRIPTION_LOCAL_THREADS",
    "TRANSCRIPTION_LOCAL_CACHE_DIR",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_by_default_voice_notes_go_to_the_chat_endpoint_as_whisper_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://llm.example.com/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-chat")

    settings = load_settings()

    assert settings.transcription_backend == "openai"
    assert settings.transcription_url == "https://llm.example.com/v1"
    key = settings.transcription_key
    assert key is not None and key.get_secret_value() == "sk-chat"
    assert settings.transcription_model_name == "whisper-1"
    assert settings.deprecations == []


def test_transcription_can_have_an_endpoint_key_and_model_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://llm.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-chat")
    monkeypatch.setenv("TRANSCRIPTION_BASE_URL", "https://asr.example.com/openai/v1/")
    monkeypatch.setenv("TRANSCRIPTION_API_KEY", "gsk-asr")
    monkeypatch.setenv("TRANSCRIPTION_MODEL", "whisper-large-v3-turbo")

    settings = load_settings()

    assert settings.transcription_url == "https://asr.example.com/openai/v1"
    key = settings.transcription_key
    assert key is not None and key.get_secret_value() == "gsk-asr"
    assert settings.transcription_model_name == "whisper-large-v3-turbo"
    assert "gsk-asr" not in repr(settings)


def test_an_empty_transcription_setting_means_the_chat_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-chat")
    for name in ("TRANSCRIPTION_BASE_URL", "TRANSCRIPTION_API_KEY", "TRANSCRIPTION_MODEL"):
        monkeypatch.setenv(name, "")

    settings = load_settings()

    assert settings.transcription_url == "https://api.openai.com/v1"
    key = settings.transcription_key
    assert key is not None and key.get_secret_value() == "sk-chat"
    assert settings.transcription_model_name == "whisper-1"


def test_the_old_model_setting_still_works_and_is_reported_as_deprecated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_TRANSCRIPTION_MODEL", "whisper-large-v3")

    settings = load_settings()

    assert settings.transcription_model_name == "whisper-large-v3"
    [warning] = settings.deprecations
    assert "OPENAI_TRANSCRIPTION_MODEL" in warning and "TRANSCRIPTION_MODEL instead" in warning


def test_the_old_and_new_model_names_may_agree_but_not_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_TRANSCRIPTION_MODEL", "whisper-1")
    monkeypatch.setenv("TRANSCRIPTION_MODEL", "whisper-1")
    assert load_settings().transcription_model_name == "whisper-1"

    monkeypatch.setenv("TRANSCRIPTION_MODEL", "gpt-4o-transcribe")
    with pytest.raises(ConfigurationError, match="set only TRANSCRIPTION_MODEL"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRANSCRIPTION_BACKEND", "whisper"),
        ("TRANSCRIPTION_BASE_URL", "asr.example.com"),
        ("TRANSCRIPTION_LOCAL_THREADS", "0"),
    ],
)
def test_a_bad_transcription_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=f"^{name} is invalid"):
        load_settings()


def test_the_local_backend_uses_the_packaged_model_unless_given_a_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRANSCRIPTION_BACKEND", "Local")
    # A hosted model's name under the old setting is not a directory to load.
    monkeypatch.setenv("OPENAI_TRANSCRIPTION_MODEL", "whisper-1")
    settings = load_settings()
    assert settings.transcription_backend == "local"
    assert settings.local_model_dir is None
    assert settings.transcription_local_threads == 2

    monkeypatch.delenv("OPENAI_TRANSCRIPTION_MODEL")
    monkeypatch.setenv("TRANSCRIPTION_MODEL", str(tmp_path))
    assert load_settings().local_model_dir == tmp_path
