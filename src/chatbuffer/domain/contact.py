"""Who the contact is, as the model is told: name, channel, inbox, labels, language, and only the
attributes the operator chose to share (``CONTACT_ATTRIBUTES_TO_MODEL``).

The facts come from what Chatwoot's webhook said about the sender and the conversation, stored
with each message (``InboundMessage.sender`` and ``.conversation``); the burst's last message has
the newest. The contact's phone number and e-mail go to the model only when named in the
selection, never through ``*``: they identify a person and the model rarely needs them.

The language is the one the contact's or the conversation's attributes name, else a guess from
the burst's words (``detect_language``): a count of common words in seven languages, enough to
tell a burst of a few messages apart, and nothing when unsure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatbuffer.domain.model import InboundMessage

#: The contact's fields that are shared only when named (never by ``*``).
PERSONAL_FIELDS = ("phone_number", "email")

#: Attribute names that state a language, in the order they are trusted.
_LANGUAGE_KEYS = ("language", "preferred_language", "locale")
#: Chatwoot's own: the conversation's language, in its additional attributes.
_CONVERSATION_LANGUAGE = "conversation_language"
_MAX_LANGUAGE_CHARS = 35


@dataclass(frozen=True, slots=True)
class AttributeSelection:
    """Which custom attributes (and personal fields) the model may see."""

    names: frozenset[str] = frozenset()
    #: ``*``: every custom attribute.
    every: bool = False

    @classmethod
    def parse(cls, text: str | None) -> AttributeSelection:
        """A comma list of names; ``*`` among them selects every custom attribute."""
        names = {n.strip() for n in (text or "").split(",") if n.strip()}
        return cls(names=frozenset(names - {"*"}), every="*" in names)

    def custom(self, attributes: Any) -> dict[str, Any]:
        """The selected entries of a ``custom_attributes`` object, in its order."""
        if not isinstance(attributes, Mapping):
            return {}
        return {
            str(k): v
            for k, v in attributes.items()
            if (self.every or k in self.names) and v not in (None, "")
        }

    def personal(self, field: str) -> bool:
        return field in self.names

    @property
    def empty(self) -> bool:
        return not self.every and not self.names


def sender_facts(sender: Mapping[str, Any], selection: AttributeSelection) -> dict[str, Any]:
    """What of a webhook's ``sender`` is kept with a contact's message: its id, name and type,
    the selected custom attributes, the attributes that state a language, and the personal
    fields the selection names. Nothing else is stored."""
    kept = {k: sender[k] for k in ("id", "name", "type") if sender.get(k) is not None}
    for field in PERSONAL_FIELDS:
        if selection.personal(field) and sender.get(field):
            kept[field] = sender[field]
    custom = selection.custom(sender.get("custom_attributes"))
    custom.update(_language_entries(sender.get("custom_attributes")))
    if custom:
        kept["custom_attributes"] = custom
    additional = _language_entries(sender.get("additional_attributes"))
    if additional:
        kept["additional_attributes"] = additional
    return kept


def conversation_facts(
    conversation: Mapping[str, Any], selection: AttributeSelection
) -> dict[str, Any]:
    """What of a webhook's ``conversation`` (with ``inbox_name`` added from the event) is kept
    with a contact's message."""
    kept = {
        k: conversation[k]
        for k in ("id", "status", "channel", "inbox_id", "inbox_name")
        if conversation.get(k) is not None
    }
    labels = [str(label) for label in conversation.get("labels") or [] if label]
    if labels:
        kept["labels"] = labels
    custom = selection.custom(conversation.get("custom_attributes"))
    if custom:
        kept["custom_attributes"] = custom
    additional = conversation.get("additional_attributes")
    if isinstance(additional, Mapping) and _text(additional.get(_CONVERSATION_LANGUAGE)):
        kept["additional_attributes"] = {_CONVERSATION_LANGUAGE: additional[_CONVERSATION_LANGUAGE]}
    return kept


def facts(messages: Sequence[InboundMessage], selection: AttributeSelection) -> dict[str, Any]:
    """The contact as the prompt shows it: only what is known, in a fixed order."""
    last = messages[-1]
    sender, conversation = last.sender, last.conversation
    found: dict[str, Any] = {"name": sender.get("name"), "channel": conversation.get("channel")}
    inbox = conversation.get("inbox_name")
    if inbox:
        found["inbox"] = inbox
    language, source = language_of(messages)
    if language:
        found["language"] = language
        found["language_source"] = source
    labels = [str(label) for label in conversation.get("labels") or [] if label]
    if labels:
        found["labels"] = labels
    for field in PERSONAL_FIELDS:
        if selection.personal(field) and sender.get(field):
            found[field] = sender[field]
    attributes = selection.custom(sender.get("custom_attributes"))
    if attributes:
        found["attributes"] = attributes
    about_conversation = selection.custom(conversation.get("custom_attributes"))
    if about_conversation:
        found["conversation_attributes"] = about_conversation
    return found


def language_of(messages: Sequence[InboundMessage]) -> tuple[str | None, str | None]:
    """(the language, where it came from: ``contact``, ``conversation`` or ``detected``)."""
    last = messages[-1]
    for where in ("custom_attributes", "additional_attributes"):
        for value in _language_entries(last.sender.get(where)).values():
            return str(value).strip(), "contact"
    additional = last.conversation.get("additional_attributes")
    if isinstance(additional, Mapping):
        stated = _text(additional.get(_CONVERSATION_LANGUAGE))
        if stated:
            return stated, "conversation"
    texts = [m.content or "" for m in messages] + [
        a.transcript or "" for m in messages for a in m.attachments
    ]
    detected = detect_language(texts)
    return (detected, "detected") if detected else (None, None)


def _language_entries(attributes: Any) -> dict[str, Any]:
    if not isinstance(attributes, Mapping):
        return {}
    return {k: attributes[k] for k in _LANGUAGE_KEYS if _text(attributes.get(k))}


def _text(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value.strip()) <= _MAX_LANGUAGE_CHARS:
        return value.strip()
    return None


def _words(listed: str) -> frozenset[str]:
    return frozenset(listed.split())


# Common words that tell the languages apart (words two of them share are left out, or listed
# for both when they are frequent in each).
_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "the and is are you your my i it this that what when where how can could please "
        "thanks thank hi hello with have has not was will would still yet does did "
        "arrived there here just"
    ),
    "pt": _words(
        "não você voce obrigado obrigada olá ola oi meu minha está tudo bem isso "
        "quando onde ainda chegou quero preciso tem uma com para é são eu do da "
        "no na você vocês dia tarde noite"
    ),
    "es": _words(
        "hola gracias usted tú mi pero muy también llegó quiero necesito tengo cuando "
        "donde cómo el los las del al y es son yo hay ya puede buenos días qué"
    ),
    "fr": _words(
        "bonjour merci je vous tu est et le la les des une mon ma pas avec pour où "
        "comment pourquoi suis ne oui commande c'est s'il plaît"
    ),
    "de": _words(
        "hallo danke ich sie du ist und der die das nicht mein meine bestellung wann wo "
        "wie warum bitte mit für ein eine noch schon habe kann"
    ),
    "it": _words(
        "ciao grazie io sono è il lo gli della mio mia ordine dove come perché per "
        "favore con ancora arrivato voglio buongiorno non"
    ),
    "nl": _words(
        "hallo dank bedankt ik je jij u is en het een niet mijn bestelling wanneer waar hoe "
        "waarom alstublieft met voor nog al heb kan"
    ),
}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
#: At least this many known words, and more than any other language has.
_MIN_WORDS = 2


def detect_language(texts: Iterable[str]) -> str | None:
    """The ISO 639-1 code of the language most of the words belong to, or None when too few
    words are known or two languages tie."""
    words = [w.lower() for text in texts for w in _WORD.findall(text)]
    scores = sorted(
        ((sum(w in known for w in words), code) for code, known in _WORDS.items()), reverse=True
    )
    (best, code), (second, _) = scores[0], scores[1]
    if best < _MIN_WORDS or best == second:
        return None
    return code
