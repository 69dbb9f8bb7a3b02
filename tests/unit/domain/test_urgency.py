"""The burst's urgency, 1 to 10, from its wording and pace."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chatbuffer.domain import urgency
from chatbuffer.domain.marker import Marker, read
from chatbuffer.domain.model import Attachment, ConversationKey, InboundMessage

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def burst(*texts: str, every: float = 60.0, voice: str | None = None) -> list[InboundMessage]:
    return [
        InboundMessage(
            key=ConversationKey(1, 1),
            chatwoot_message_id=i + 1,
            content=text,
            kind="text",
            content_type="text",
            received_at=START + timedelta(seconds=every * i),
            attachments=(Attachment("audio", transcript=voice),) if voice and i == 0 else (),
        )
        for i, text in enumerate(texts)
    ]


def test_a_calm_question_is_the_lowest_urgency() -> None:
    assert urgency.score(burst("hi, what are your opening hours?")) == 1


def test_asking_for_speed_and_reporting_a_problem_raise_it() -> None:
    assert urgency.score(burst("please help, the app is not working")) == 6
    assert urgency.score(burst("I need a refund")) == 3
    assert urgency.score(burst("it's urgent")) == 4


def test_shouting_insistent_punctuation_and_a_rapid_burst_raise_it_to_the_top() -> None:
    calm = burst("my card was charged twice", "can you check")
    loud = burst(
        "URGENT my card was CHARGED TWICE!!",
        "hello??",
        "anyone?",
        "please answer!",
        "now",
        every=5,
    )
    assert urgency.score(calm) == 3
    assert urgency.score(loud) == urgency.HIGHEST


def test_words_match_in_portuguese_and_spanish_whatever_the_accents_and_case() -> None:
    assert urgency.score(burst("É URGÊNCIA, não funciona")) >= 6
    assert urgency.score(burst("ayuda, es una estafa")) == 6


def test_a_voice_note_counts_with_what_it_says() -> None:
    assert urgency.score(burst("", voice="emergency, my package was stolen")) == 6


def test_many_messages_close_together_read_as_waiting_on_the_answer() -> None:
    assert urgency.score(burst("a", "b", "c", every=60)) == 1
    assert urgency.score(burst("a", "b", "c", every=10)) == 2
    assert urgency.score(burst("a", "b", "c", "d", "e", every=10)) == 3


@given(st.lists(st.text(max_size=60), min_size=1, max_size=8), st.floats(0, 600))
def test_the_score_is_always_within_its_range(texts: list[str], every: float) -> None:
    assert urgency.LOWEST <= urgency.score(burst(*texts, every=every)) <= urgency.HIGHEST


# -- the marker of a part -------------------------------------------------------------------------


def test_a_part_s_marker_reads_back_and_an_older_marker_is_the_first_part() -> None:
    buffer_id = uuid.uuid4()
    third = Marker(buffer_id, "reply", 2)
    assert read(third.attributes(), private=False) == third
    # The first part's marker is the one earlier versions wrote, without a part.
    assert "part" not in Marker(buffer_id, "reply").attributes()["chatbuffer"]
    old = {"chatbuffer": {"buffer_id": str(buffer_id), "kind": "reply"}}
    assert read(old, private=False) == Marker(buffer_id, "reply", 0)
    broken = {"chatbuffer": {"buffer_id": str(buffer_id), "kind": "reply", "part": "2"}}
    assert read(broken, private=False) is None
