"""Observers of buffer events: a log writer, and a fan-out to several observers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from chatbuffer.domain.model import ConversationKey
from chatbuffer.domain.ports import EventName, Observer

logger = logging.getLogger("chatbuffer.events")

#: Fields that may hold what a customer or the model wrote; logged only at DEBUG.
PRIVATE_FIELDS = frozenset({"reply", "content", "draft"})


#: Failures warn. A message joining an open buffer is routine and can come thousands of times a
#: second: DEBUG (its buffer's opening and closing are at INFO).
_LEVELS: dict[str, int] = {
    "buffer_failed": logging.WARNING,
    "attempt_failed": logging.WARNING,
    "buffer_extended": logging.DEBUG,
}


class LoggingObserver:
    """Writes every event as one log line; message text only at DEBUG."""

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None:
        public = {k: v for k, v in fields.items() if k not in PRIVATE_FIELDS}
        level = _LEVELS.get(name, logging.INFO)
        logger.log(level, name, extra={"conversation": str(key), **public})
        if logger.isEnabledFor(logging.DEBUG):
            private = {k: v for k, v in fields.items() if k in PRIVATE_FIELDS}
            if private:
                logger.debug("%s text", name, extra={"conversation": str(key), **private})


class FanOut:
    """Sends each event to every observer; one failing observer does not silence the others."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    def event(self, name: EventName, key: ConversationKey, **fields: Any) -> None:
        for observer in self._observers:
            try:
                observer.event(name, key, **fields)
            except Exception:
                logger.exception("observer %r failed on %s", observer, name)
