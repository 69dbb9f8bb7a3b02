"""Control words: a message that is nothing but "human" (or "atendente", "agente", ...) asks for
a person, and the bot steps back at once instead of answering the burst.

Only a message whose whole text is the word counts: "a human would know" or "I'm not a bot, I'm a
human" is a normal message for the model. The comparison forgives what a contact typing on a
phone does to one word: case, accents ("Atendente", "ATENDÊNTE"), punctuation and emoji around
it ("humano!!", "agent?"), and spaces. Pure: no I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

from chatbuffer.domain.model import InboundMessage

#: ``HANDOFF_KEYWORDS``' default: English, Portuguese and Spanish words for a person.
DEFAULT_KEYWORDS = ("human", "agent", "humano", "atendente", "agente", "persona")


def normalize(text: str) -> str:
    """The text as compared: accents dropped, lower case, everything but letters and digits
    removed, words joined by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = []
    for char in decomposed:
        if unicodedata.combining(char):
            continue
        kept.append(char.casefold() if char.isalnum() else " ")
    return " ".join("".join(kept).split())


def keywords(raw: str) -> frozenset[str]:
    """The setting's comma list as compared (``ValueError`` if a word normalizes to nothing)."""
    words = [w for w in raw.split(",") if w.strip()]
    found = set()
    for word in words:
        normal = normalize(word)
        if not normal:
            raise ValueError(f"{word.strip()!r} has no letters or digits")
        found.add(normal)
    return frozenset(found)


def matches(text: str | None, words: Iterable[str]) -> str | None:
    """The control word ``text`` is, if it is one (as normalized), else None."""
    if not text:
        return None
    normal = normalize(text)
    return normal if normal and normal in frozenset(words) else None


def in_burst(messages: Sequence[InboundMessage], words: frozenset[str]) -> str | None:
    """The first control word among a burst's messages (a caption counts as the text)."""
    if not words:
        return None
    for message in messages:
        word = matches(message.content, words)
        if word is not None:
            return word
    return None
