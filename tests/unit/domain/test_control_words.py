"""Control words: the whole message, forgiving case, accents, punctuation and spacing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chatbuffer.domain import control_words
from chatbuffer.domain.model import ConversationKey, InboundMessage

WORDS = control_words.keywords(", ".join(control_words.DEFAULT_KEYWORDS))


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("human", "human"),
        ("HUMAN", "human"),
        ("  Agent.  ", "agent"),
        ("Humano!!", "humano"),
        ("¿agente?", "agente"),
        ("ATENDÊNTE", "atendente"),
        ("Pérsona 🙏", "persona"),
        ("*humano*", "humano"),
        ("agent\n", "agent"),
    ],
)
def test_a_message_that_is_only_the_word_matches(text: str, word: str) -> None:
    assert control_words.matches(text, WORDS) == word


@pytest.mark.parametrize(
    "text",
    [
        "I want to talk to a human",
        "human please",
        "humans",
        "agentes",
        "hum an",
        "",
        "!!!",
        None,
        "is there a human agent?",
    ],
)
def test_anything_more_or_less_is_an_ordinary_message(text: str | None) -> None:
    assert control_words.matches(text, WORDS) is None


def test_the_setting_is_normalized_like_the_messages() -> None:
    assert control_words.keywords(" Atendente , FALAR COM ALGUÉM,,") == {
        "atendente",
        "falar com alguem",
    }
    assert control_words.matches("Falar  com alguém!", control_words.keywords("falar com alguém"))
    assert control_words.keywords("") == frozenset()


def test_a_word_with_no_letters_is_refused() -> None:
    with pytest.raises(ValueError, match="no letters"):
        control_words.keywords("human, ???")


def message(content: str | None, message_id: int) -> InboundMessage:
    return InboundMessage(
        key=ConversationKey(1, 2),
        chatwoot_message_id=message_id,
        content=content,
        kind="text",
        content_type="text",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_the_first_control_word_of_a_burst_is_found() -> None:
    burst = [message("hi", 1), message(None, 2), message("Humano", 3), message("agent", 4)]
    assert control_words.in_burst(burst, WORDS) == "humano"
    assert control_words.in_burst(burst[:2], WORDS) is None
    assert control_words.in_burst(burst, frozenset()) is None
