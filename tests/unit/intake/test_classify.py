"""Which Chatwoot events are buffered, which cancel, which are ignored (pure, no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from chatbuffer.domain.contact import AttributeSelection
from chatbuffer.domain.marker import Marker
from chatbuffer.domain.model import ConversationKey, HistoryEntry
from chatbuffer.errors import MalformedPayload
from chatbuffer.intake.webhook import (
    Buffer,
    CancelBuffers,
    ConfirmSent,
    ControlWord,
    Ignore,
    IntakeRules,
    KeepContactMessage,
    RecordAgentMessage,
    ResumeBot,
    UpdateAttachments,
    classify,
    parse,
)
from chatbuffer.simulator import payloads

NOW = datetime(2026, 8, 14, 10, 2, 11, tzinfo=UTC)
RULES = IntakeRules(active_statuses=frozenset({"pending"}))


def act(body: dict[str, Any], rules: IntakeRules = RULES):
    return classify(parse(body), rules, NOW)


def incoming(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "account_id": 1,
        "conversation_id": 1532,
        "message_id": 90812,
        "content": "hi, do you deliver on sunday?",
        "created_at": NOW,
    }
    args.update(overrides)
    return payloads.incoming_text(**args)


def test_incoming_text_in_a_pending_conversation_is_buffered() -> None:
    action = act(incoming())
    assert isinstance(action, Buffer)
    message = action.message
    assert message.key == ConversationKey(1, 1532)
    assert message.chatwoot_message_id == 90812
    assert message.content == "hi, do you deliver on sunday?"
    assert message.kind == "text"
    assert message.received_at == NOW


def test_voice_note_is_buffered_with_its_transcript() -> None:
    body = payloads.incoming_attachment(
        account_id=1,
        conversation_id=7,
        message_id=5,
        created_at=NOW,
        file_type="audio",
        data_url="https://chatwoot.example/rails/active_storage/x.ogg",
        transcribed_text="my order is late",
    )
    action = act(body)
    assert isinstance(action, Buffer)
    assert action.message.kind == "audio"
    assert action.message.attachments[0].transcript == "my order is late"


def test_locations_contact_cards_and_stickers_keep_what_the_prompt_needs() -> None:
    where: dict[str, Any] = {"account_id": 1, "conversation_id": 7, "created_at": NOW}
    place = act(
        payloads.incoming_location(
            message_id=6,
            latitude=-23.5505,
            longitude=-46.6333,
            name="Acme",
            address="1 Main St",
            **where,
        )
    )
    card = act(
        payloads.incoming_contact(
            message_id=7, phone="+5511988887777", first_name="Bia", last_name="Souza", **where
        )
    )
    sticker = act(
        payloads.incoming_attachment(
            message_id=8,
            file_type="image",
            data_url="https://chatwoot.example/rails/active_storage/s.webp",
            content_type="image/webp",
            extension="webp",
            **where,
        )
    )
    assert isinstance(place, Buffer) and isinstance(card, Buffer) and isinstance(sticker, Buffer)
    [location] = place.message.attachments
    assert (location.file_type, location.fallback_title) == ("location", "Acme, 1 Main St")
    assert (location.coordinates_lat, location.coordinates_long) == (-23.5505, -46.6333)
    [contact] = card.message.attachments
    assert (contact.fallback_title, contact.contact_name) == ("+5511988887777", "Bia Souza")
    [webp] = sticker.message.attachments
    assert (webp.content_type, webp.extension) == ("image/webp", "webp")
    # Stored and read back, they are the same.
    for attachment in (location, contact, webp):
        assert type(attachment).from_json(attachment.as_json()) == attachment


def test_transcript_arriving_later_updates_the_message() -> None:
    body = payloads.incoming_attachment(
        account_id=1,
        conversation_id=7,
        message_id=5,
        created_at=NOW,
        file_type="audio",
        data_url="https://chatwoot.example/a.ogg",
        transcribed_text="later text",
        event="message_updated",
    )
    action = act(body)
    assert isinstance(action, UpdateAttachments)
    assert action.chatwoot_message_id == 5
    assert action.attachments[0].transcript == "later text"


@pytest.mark.parametrize("status", ["open", "resolved", "snoozed"])
def test_conversations_outside_the_active_statuses_only_keep_the_message(status: str) -> None:
    action = act(incoming(status=status))
    # Not buffered, never answered: kept for the history the bot reads when it is back.
    assert isinstance(action, KeepContactMessage)
    assert action.reason == f"conversation is {status}"
    assert action.message.role == "contact"
    assert action.message.chatwoot_message_id == 90812
    assert action.message.at == NOW


WORDS = IntakeRules(
    active_statuses=frozenset({"pending"}), handoff_keywords=frozenset({"humano", "agent"})
)


@pytest.mark.parametrize("text", ["Humano!", "  AGENT ", "humano?!", "hümano"])
def test_a_message_that_is_only_a_control_word_asks_for_a_person(text: str) -> None:
    action = act(incoming(content=text), WORDS)
    assert isinstance(action, ControlWord)
    assert action.message.content == text


@pytest.mark.parametrize("text", ["I want a human agent", "agents", "humano por favor"])
def test_a_control_word_inside_a_sentence_is_an_ordinary_message(text: str) -> None:
    assert isinstance(act(incoming(content=text), WORDS), Buffer)


def test_without_control_words_nothing_is_one() -> None:
    assert isinstance(act(incoming(content="human")), Buffer)


def test_conversation_updated_that_moves_the_status_back_resumes() -> None:
    # A resolved conversation reopened by the contact: Chatwoot sets it back to pending.
    body = payloads.conversation_status_changed(
        account_id=1, conversation_id=7, status="pending", previous_status="resolved"
    )
    body["event"] = "conversation_updated"
    assert act(body) == ResumeBot(ConversationKey(1, 7), "pending")


def test_active_statuses_are_configurable() -> None:
    rules = IntakeRules(active_statuses=frozenset({"pending", "open"}))
    assert isinstance(act(incoming(status="open"), rules), Buffer)


def test_other_accounts_are_ignored_when_one_is_configured() -> None:
    rules = IntakeRules(active_statuses=frozenset({"pending"}), account_id=2)
    assert act(incoming(), rules) == Ignore("account is not served by this chatbuffer")


def test_private_note_is_ignored() -> None:
    body = payloads.private_note(
        account_id=1, conversation_id=7, message_id=9, content="fyi", created_at=NOW
    )
    assert act(body) == Ignore("private note")


def test_bot_own_reply_is_ignored() -> None:
    body = payloads.bot_reply(
        account_id=1, conversation_id=7, message_id=9, content="hello", created_at=NOW
    )
    assert act(body) == Ignore("the bot's own reply")


@pytest.mark.parametrize(("private", "kind"), [(False, "reply"), (True, "handoff_note")])
def test_the_echo_of_a_marked_message_confirms_the_send(private: bool, kind: str) -> None:
    buffer_id = uuid.uuid4()
    body = payloads.bot_reply(
        account_id=1,
        conversation_id=7,
        message_id=9,
        content="hello",
        created_at=NOW,
        private=private,
        content_attributes={"chatbuffer": {"buffer_id": str(buffer_id), "kind": kind}},
    )
    assert act(body) == ConfirmSent(ConversationKey(1, 7), Marker(buffer_id, kind), 9)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "marker",
    [{"buffer_id": "not-a-uuid"}, {"buffer_id": str(uuid.uuid4()), "kind": "poem"}, "junk"],
)
def test_an_unreadable_marker_is_still_the_bot_s_own_message(marker: Any) -> None:
    body = payloads.bot_reply(
        account_id=1,
        conversation_id=7,
        message_id=9,
        content="hello",
        created_at=NOW,
        content_attributes={"chatbuffer": marker},
    )
    assert act(body) == Ignore("the bot's own reply")


def test_a_human_agent_s_answer_is_kept_for_the_history_under_their_name() -> None:
    body = payloads.agent_reply(
        account_id=1,
        conversation_id=7,
        message_id=9,
        content="I'll help",
        created_at=NOW,
        agent_name="Bruno",
    )
    assert act(body) == RecordAgentMessage(
        ConversationKey(1, 7),
        HistoryEntry("agent", "I'll help", NOW, author="Bruno", chatwoot_message_id=9),
        "a human agent answered",
    )


def test_an_answer_from_the_business_phone_is_kept_without_an_author() -> None:
    body = payloads.phone_echo(
        account_id=1, conversation_id=7, message_id=9, content="on my way", created_at=NOW
    )
    assert act(body) == RecordAgentMessage(
        ConversationKey(1, 7),
        HistoryEntry("agent", "on my way", NOW, chatwoot_message_id=9),
        "a human agent answered",
    )


def test_a_private_note_never_reaches_the_history() -> None:
    body = payloads.private_note(
        account_id=1, conversation_id=7, message_id=9, content="VIP, be nice", created_at=NOW
    )
    assert act(body) == Ignore("private note")


def test_only_the_chosen_contact_facts_are_kept_with_a_message() -> None:
    body = incoming(
        contact_attributes={"plan": "gold", "cpf": "123.456.789-00", "language": "pt-BR"},
        conversation_attributes={"order": "4411", "internal_score": 3},
        labels=["vip", "refund"],
        contact_email="ana@example.com",
    )
    rules = IntakeRules(
        active_statuses=frozenset({"pending"}),
        attributes=AttributeSelection.parse("plan, order"),
    )
    action = act(body, rules)
    assert isinstance(action, Buffer)
    assert action.message.sender == {
        "id": 77,
        "name": "Ana",
        "custom_attributes": {"plan": "gold", "language": "pt-BR"},
    }
    assert action.message.conversation == {
        "id": 1532,
        "status": "pending",
        "channel": "Channel::Whatsapp",
        "inbox_id": 4,
        "inbox_name": "WhatsApp Sales",
        "labels": ["vip", "refund"],
        "custom_attributes": {"order": "4411"},
    }
    named = IntakeRules(
        active_statuses=frozenset({"pending"}),
        attributes=AttributeSelection.parse("*,email"),
    )
    everything = act(body, named)
    assert isinstance(everything, Buffer)
    assert everything.message.sender["email"] == "ana@example.com"
    assert "phone_number" not in everything.message.sender
    assert everything.message.sender["custom_attributes"]["cpf"] == "123.456.789-00"


def test_contact_facts_of_an_odd_shape_are_dropped_not_refused() -> None:
    body = incoming()
    body["sender"]["custom_attributes"] = ["not", "an", "object"]
    body["sender"]["phone_number"] = 5511999990000
    body["conversation"]["labels"] = "vip"
    body["inbox"] = "WhatsApp"
    rules = IntakeRules(
        active_statuses=frozenset({"pending"}), attributes=AttributeSelection.parse("*")
    )
    action = act(body, rules)
    assert isinstance(action, Buffer)
    assert action.message.sender == {"id": 77, "name": "Ana"}
    assert "labels" not in action.message.conversation
    assert "inbox_name" not in action.message.conversation


def test_conversation_leaving_the_active_statuses_cancels() -> None:
    body = payloads.conversation_status_changed(account_id=1, conversation_id=7, status="resolved")
    assert act(body) == CancelBuffers(ConversationKey(1, 7), "conversation became resolved")


def test_a_status_change_back_to_an_active_status_resumes_the_bot() -> None:
    body = payloads.conversation_status_changed(account_id=1, conversation_id=7, status="pending")
    assert act(body) == ResumeBot(ConversationKey(1, 7), "pending")


def test_conversation_updated_in_an_active_status_does_not_resume() -> None:
    # Chatwoot sends conversation_updated when a human replies (first_reply_created_at changes).
    body = {
        **payloads.conversation_status_changed(account_id=1, conversation_id=7, status="pending")
    }
    body["event"] = "conversation_updated"
    assert act(body) == Ignore("conversation change needs no action")


def test_unknown_events_are_ignored_by_name() -> None:
    assert act({"event": "contact_created", "id": 3}) == Ignore(
        "event contact_created is not handled"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([1, 2], "JSON object"),
        ({"id": 1}, 'no "event"'),
        ({"event": "message_created", "id": 1}, "message_created payload is invalid"),
        ({**incoming(), "id": -5}, "invalid at id"),
        ({**incoming(), "conversation": {"id": "abc"}}, "invalid at conversation.id"),
        # Ids that no Chatwoot column holds (found by the fuzz suite as 5xx on PostgreSQL).
        ({**incoming(), "id": 2**63}, "invalid at id"),
        ({**incoming(), "conversation": {"id": 2**31}}, "invalid at conversation.id"),
        ({**incoming(), "account": {"id": 2**31}}, "invalid at account.id"),
    ],
)
def test_unreadable_bodies_are_rejected_with_a_reason(body: Any, fragment: str) -> None:
    with pytest.raises(MalformedPayload, match=fragment) as caught:
        parse(body)
    assert caught.value.status_code == 422


def test_nul_characters_are_marked_not_stored() -> None:
    """PostgreSQL cannot store NUL; the message is kept with a visible mark where it was."""
    body = incoming()
    body["content"] = "order\x004411"
    body["sender"]["name"] = "A\x00na"
    action = act(body)
    assert isinstance(action, Buffer)
    assert action.message.content == "order\ufffd4411"
    assert action.message.sender["name"] == "A\ufffdna"
