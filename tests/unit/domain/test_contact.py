"""Who the contact is, as the model is told (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chatbuffer.domain.contact import AttributeSelection, detect_language, facts, language_of
from chatbuffer.domain.model import Attachment, ConversationKey, InboundMessage

AT = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def message(
    content: str = "hi",
    sender: dict[str, Any] | None = None,
    conversation: dict[str, Any] | None = None,
    attachments: tuple[Attachment, ...] = (),
) -> InboundMessage:
    return InboundMessage(
        key=ConversationKey(1, 1),
        chatwoot_message_id=1,
        content=content,
        kind="text",
        content_type="text",
        received_at=AT,
        attachments=attachments,
        sender={"name": "Ana", **(sender or {})},
        conversation={"channel": "Channel::Whatsapp", **(conversation or {})},
    )


def test_a_selection_is_a_comma_list_and_a_star() -> None:
    assert AttributeSelection.parse(" plan , ,vip ") == AttributeSelection(
        frozenset({"plan", "vip"})
    )
    assert AttributeSelection.parse("*") == AttributeSelection(every=True)
    assert AttributeSelection.parse("") == AttributeSelection()
    assert AttributeSelection.parse(None).empty


def test_only_the_listed_attributes_and_personal_fields_are_told() -> None:
    burst = [
        message(
            "I need a refund for my order, please",
            sender={
                "phone_number": "+5511999990000",
                "email": "ana@example.com",
                "custom_attributes": {"plan": "gold", "cpf": "123"},
            },
            conversation={
                "inbox_name": "WhatsApp Sales",
                "labels": ["vip"],
                "custom_attributes": {"order": "4411", "score": 3},
            },
        )
    ]
    assert facts(burst, AttributeSelection.parse("plan,order,phone_number")) == {
        "name": "Ana",
        "channel": "Channel::Whatsapp",
        "inbox": "WhatsApp Sales",
        "language": "en",
        "language_source": "detected",
        "labels": ["vip"],
        "phone_number": "+5511999990000",
        "attributes": {"plan": "gold"},
        "conversation_attributes": {"order": "4411"},
    }
    every = facts(burst, AttributeSelection.parse("*"))
    assert every["attributes"] == {"plan": "gold", "cpf": "123"}
    assert "phone_number" not in every and "email" not in every
    assert "attributes" not in facts(burst, AttributeSelection())


def test_a_language_the_contact_states_wins_over_a_guess() -> None:
    said = "where is my order, it has not arrived"
    assert language_of([message(said, sender={"custom_attributes": {"language": "pt-BR"}})]) == (
        "pt-BR",
        "contact",
    )
    conversation = {"additional_attributes": {"conversation_language": "es"}}
    assert language_of([message(said, conversation=conversation)]) == ("es", "conversation")
    assert language_of([message(said)]) == ("en", "detected")
    assert language_of([message("4411")]) == (None, None)


def test_a_voice_note_s_transcript_counts_for_the_language() -> None:
    note = Attachment("audio", transcript="olá, meu pedido ainda não chegou")
    assert language_of([message("", attachments=(note,))]) == ("pt", "detected")


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (
            [
                "hi",
                "I ordered this blue jacket last week",
                "it still hasn't arrived, can you check?",
            ],
            "en",
        ),
        (["oi", "meu pedido ainda não chegou", "você pode ver?"], "pt"),
        (["hola", "mi pedido no llegó", "¿me puede ayudar? gracias"], "es"),
        (["bonjour", "je n'ai pas reçu ma commande"], "fr"),
        (["hallo", "ich habe meine Bestellung nicht bekommen"], "de"),
        (["ciao", "il mio ordine non è arrivato"], "it"),
        (["hallo", "ik heb mijn bestelling niet gekregen"], "nl"),
        (["4411", "ok"], None),
        ([], None),
    ],
)
def test_the_language_is_guessed_from_common_words(texts: list[str], expected: str | None) -> None:
    assert detect_language(texts) == expected
