"""What to do with the model's answer."""

from __future__ import annotations

from chatbuffer.domain.model import HandOff, ModelDecision, Outcome, SendReply, StaySilent


def route(decision: ModelDecision, *, quality_threshold: float) -> Outcome:
    """Reply, hand off to a human, or stay silent.

    A confident answer is sent. An unsure one is not shown to the customer: a human gets the draft
    and the reason instead, because a wrong answer costs more trust than a slower one.
    """
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


def failure_note(error: str, *, attempts: int) -> str:
    """The private note a human agent sees when the bot could not answer at all."""
    return (
        f"chatbuffer could not answer this conversation after {attempts} "
        f"attempt{'s' if attempts != 1 else ''} ({error}). Please reply to the customer."
    )


def handoff_note(outcome: HandOff) -> str:
    """The private note a human agent sees when the bot steps back."""
    draft = outcome.draft.strip() or "(no draft)"
    return (
        f"chatbuffer handed this conversation to a human: {outcome.reason}.\n\n"
        f"Draft reply:\n{draft}"
    )
