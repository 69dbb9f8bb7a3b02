"""How urgent a burst reads, from 1 (calm) to 10 (drop everything): the rebuild plan's
``urgencyScore``, "1-10 based on content analysis".

A heuristic over what the contact wrote (and said, in voice-note transcripts) and how fast: words
that ask for speed, words that report a problem, shouting, insistent punctuation, and many
messages in a short time. It is shown to the model (the prompt's ``urgency``) and stored with the
buffer; the smart windows' fast track (a flag, off by default) also reads a message's own score.
Words are matched in English, Portuguese and Spanish, accents and case ignored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import timedelta

from chatbuffer.domain.model import InboundMessage

LOWEST = 1
HIGHEST = 10

#: Asking for speed or help.
_HURRY = re.compile(
    r"\b(urgent\w*|urgencia|asap|emergency|emergencia|immediately|imediatamente|"
    r"inmediatamente|right now|agora mesmo|ahora mismo|help|ajuda|ayuda|socorro)\b"
)
#: Reporting that something went wrong.
_PROBLEM = re.compile(
    r"\b(not working|doesn'?t work|does not work|broken|error|failed|fraud|stolen|scam|"
    r"charged twice|refund|complaint|nao funciona|no funciona|quebrad[oa]|erro|falhou|golpe|"
    r"fraude|roubad[oa]|reembolso|reclamacao|roto|estafa|robad[oa]|reclamo)\b"
)
_INSISTENT = re.compile(r"[?!]{2,}")
#: Several messages this close together read as someone waiting on the answer.
_RAPID_GAP = timedelta(seconds=20)


def score(messages: Sequence[InboundMessage]) -> int:
    """The burst's urgency, ``LOWEST`` to ``HIGHEST``; the same burst always scores the same."""
    texts = [_text(m) for m in messages]
    plain = _plain(" \n".join(texts))
    points = LOWEST
    if _HURRY.search(plain):
        points += 3
    if _PROBLEM.search(plain):
        points += 2
    if sum(t.count("!") for t in texts) >= 2:
        points += 1
    if _INSISTENT.search(plain):
        points += 1
    if any(_shouts(t) for t in texts):
        points += 1
    if _rapid(messages):
        points += 1
    if len(messages) >= 5:
        points += 1
    return max(LOWEST, min(HIGHEST, points))


def _text(message: InboundMessage) -> str:
    spoken = [a.transcript for a in message.attachments if a.transcript]
    return " ".join([message.content or "", *spoken])


def _plain(text: str) -> str:
    """Lower case without accents, so "URGÊNCIA" and "urgencia" match alike."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _shouts(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 8 and sum(c.isupper() for c in letters) >= 0.7 * len(letters)


def _rapid(messages: Sequence[InboundMessage]) -> bool:
    if len(messages) < 3:
        return False
    times = sorted(m.received_at for m in messages)
    return (times[-1] - times[0]) / (len(times) - 1) <= _RAPID_GAP
