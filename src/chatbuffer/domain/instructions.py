"""The business's own instructions to the bot: one default, and per Chatwoot inbox if it wants."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BotInstructions:
    """Who the bot is, what it may promise, hours, FAQ, tone: written by the business.

    An inbox with its own text (``BOT_INSTRUCTIONS_DIR/<inbox_id>.md``) gets that text instead of
    the default (``BOT_INSTRUCTIONS`` or ``BOT_INSTRUCTIONS_FILE``), never both: the business
    writes each inbox's text whole.
    """

    default: str = ""
    by_inbox: Mapping[int, str] = field(default_factory=dict)

    def for_inbox(self, inbox_id: int | None) -> str:
        if inbox_id is not None and inbox_id in self.by_inbox:
            return self.by_inbox[inbox_id]
        return self.default
