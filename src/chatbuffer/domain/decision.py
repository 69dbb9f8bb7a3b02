"""What to do with the model's answer."""

from __future__ import annotations

from collections.abc import Sequence

from chatbuffer.domain.model import (
    HandOff,
    InboundMessage,
    ModelDecision,
    Outcome,
    SendReply,
    StaySilent,
)

#: The model's ``actions`` entry that gives the conversation to a person.
HANDOFF_ACTION = "handoff"
#: How much of the burst a hand-off note retells.
SUMMARY_CHARS = 280


def route(decision: ModelDecision, *, quality_threshold: float) -> Outcome:
    """Reply, hand off to a human, or stay silent.

    A confident answer is sent. An unsure one is not shown to the customer: a human gets the draft
    and the reason instead, because a wrong answer costs more trust than a slower one.
    """
    if HANDOFF_ACTION in {a.strip().lower() for a in decision.actions}:
        return _asked_for_a_human(decision, quality_threshold)
    if not decision.should_respond:
        return StaySilent(reason=f"model chose not to respond (intent: {decision.intent})")
    if not decision.content.strip():
        return HandOff(draft="", reason="model wanted to respond but wrote nothing")
    if decision.confidence < quality_threshold:
        return HandOff(
            draft=decision.content,
            reason=(
                f"confidence {decision.confidence:.2f} is below the threshold "
                f"{quality_threshold:.2f} (intent: {decision.intent})"
            ),
        )
    return SendReply(content=decision.content)


def _asked_for_a_human(decision: ModelDecision, quality_threshold: float) -> HandOff:
    """The model wants a person: its confident public answer, if it wrote one, is still sent
    (the contact is told something); an unsure one is only the draft in the note."""
    reason = f"the model asked for a human (intent: {decision.intent})"
    content = decision.content.strip()
    if decision.should_respond and content and decision.confidence >= quality_threshold:
        return HandOff(draft="", reason=reason, reply=decision.content)
    return HandOff(draft=decision.content if decision.should_respond else "", reason=reason)


def burst_summary(messages: Sequence[InboundMessage], *, limit: int = SUMMARY_CHARS) -> str:
    """A short retelling of a burst for a human agent: each message's text (or what it
    carried), joined, cut at ``limit`` characters."""
    parts = []
    for message in messages:
        text = " ".join((message.content or "").split())
        carried = [_carried(a.file_type, a.transcript) for a in message.attachments]
        parts.append(" ".join([*carried, text]).strip() or "(empty message)")
    joined = " / ".join(parts)
    if len(joined) <= limit:
        return joined
    return joined[: limit - 1].rstrip() + "…"


def _carried(file_type: str, transcript: str | None) -> str:
    if file_type == "audio":
        return f"[voice note: {' '.join(transcript.split())}]" if transcript else "[voice note]"
    return f"[{file_type}]"


def control_word_note(word: str, summary: str) -> str:
    """The private note when the contact asked for a person with a control word."""
    return (
        f"chatbuffer handed this conversation to a human: the contact wrote the control word "
        f"{word!r} (control_word). The bot did not answer this burst.\n\n"
        f"The contact wrote: {summary}"
    )


def failure_note(error: str, *, attempts: int) -> str:
    """The private note a human agent sees when the bot could not answer at all."""
    return (
        f"chatbuffer could not answer this conversation after {attempts} "
        f"attempt{'s' if attempts != 1 else ''} ({error}). Please reply to the customer."
    )


def handoff_note(outcome: HandOff, summary: str = "") -> str:
    """The private note a human agent sees when the bot steps back: why, what the contact
    wrote, and the model's draft (or the reply it was sent)."""
    wrote = f"The contact wrote: {summary}\n\n" if summary else ""
    if outcome.reply is not None:
        answer = f"The bot replied first:\n{outcome.reply.strip()}"
    else:
        answer = f"Draft reply:\n{outcome.draft.strip() or '(no draft)'}"
    return f"chatbuffer handed this conversation to a human: {outcome.reason}.\n\n{wrote}{answer}"
