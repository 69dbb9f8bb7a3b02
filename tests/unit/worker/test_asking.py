"""Asking the model about a burst: attachments read, instructions per inbox, one repair of an
invalid answer, one retry without images when the endpoint has no vision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chatbuffer.domain.instructions import BotInstructions
from chatbuffer.domain.model import (
    Attachment,
    AttachmentContent,
    ConversationKey,
    InboundMessage,
    InlineImage,
    ModelDecision,
)
from chatbuffer.errors import AttachmentError, ImagesRefused, InvalidModelAnswer, ModelError
from chatbuffer.testing import ScriptedReplyModel, StaticAttachmentReader
from chatbuffer.worker.asking import Asker

KEY = ConversationKey(1, 7)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ANSWER = ModelDecision(should_respond=True, content="Hi!", confidence=0.9, intent="greeting")
PHOTO = "https://cw.example/rails/active_storage/blobs/redirect/t/photo.jpg"
INVOICE = "https://cw.example/rails/active_storage/blobs/redirect/t/invoice.pdf"


def msg(i: int, content: str | None, *attachments: Attachment, inbox: int = 4) -> InboundMessage:
    return InboundMessage(
        key=KEY,
        chatwoot_message_id=i,
        content=content,
        kind="text",
        content_type="text",
        received_at=T0 + timedelta(seconds=i),
        attachments=attachments,
        sender={"name": "Ana"},
        conversation={"channel": "Channel::Whatsapp", "inbox_id": inbox},
    )


def invalid(problem: str = "it is not JSON") -> InvalidModelAnswer:
    return InvalidModelAnswer("not the expected JSON", answer="Sure!", problem=problem)


def scripted(*answers: ModelDecision | Exception) -> ScriptedReplyModel:
    queue = list(answers)
    return ScriptedReplyModel(lambda prompt: queue.pop(0))


async def test_images_and_files_are_read_once_each_and_reach_the_prompt() -> None:
    reader = StaticAttachmentReader(
        {
            PHOTO: AttachmentContent(image=InlineImage("image/jpeg", b"\xff\xd8\xffjpeg")),
            INVOICE: AttachmentContent(text="Total 42", pages=1),
        }
    )
    model = scripted(ANSWER)
    asker = Asker(model=model, reader=reader)
    burst = [
        msg(1, "see", Attachment("image", PHOTO, content_type="image/jpeg")),
        msg(2, None, Attachment("file", INVOICE, content_type="application/pdf")),
        msg(3, None, Attachment("audio", "https://cw.example/v.ogg", transcript="hello")),
    ]
    asked = await asker.ask(await asker.inputs(burst, [], include_history=True))
    assert asked.decision == ANSWER
    assert reader.reads == [(PHOTO, "image"), (INVOICE, "text")]
    [prompt] = model.prompts
    assert [i.data_url for i in prompt.images] == ["data:image/jpeg;base64,/9j/anBlZw=="]
    assert "Total 42" in prompt.user
    assert "cw.example" not in prompt.user


async def test_with_vision_off_images_are_not_downloaded() -> None:
    reader = StaticAttachmentReader()
    asker = Asker(model=scripted(ANSWER), reader=reader, vision=False)
    inputs = await asker.inputs(
        [msg(1, None, Attachment("image", PHOTO, content_type="image/jpeg"))],
        [],
        include_history=True,
    )
    assert reader.reads == []
    assert asker.prompt(inputs).images == ()


async def test_a_passing_download_failure_fails_the_attempt_for_a_retry() -> None:
    reader = StaticAttachmentReader({PHOTO: AttachmentError("the download timed out")})
    asker = Asker(model=scripted(ANSWER), reader=reader)
    with pytest.raises(AttachmentError):
        await asker.inputs([msg(1, None, Attachment("image", PHOTO))], [], include_history=True)


async def test_each_inbox_gets_its_own_instructions_or_the_default() -> None:
    instructions = BotInstructions(default="We sell bikes.", by_inbox={9: "We fix bikes."})
    model = scripted(ANSWER, ANSWER, ANSWER)
    asker = Asker(model=model, instructions=instructions)
    for inbox in (4, 9):
        await asker.ask(await asker.inputs([msg(1, "hi", inbox=inbox)], [], include_history=True))
    assert [p.system.split("\n\n", 1)[0] for p in model.prompts] == [
        "We sell bikes.",
        "We fix bikes.",
    ]
    other = asker.with_instructions(BotInstructions(default="Trial text."))
    await other.ask(await other.inputs([msg(1, "hi", inbox=9)], [], include_history=True))
    assert model.prompts[-1].system.startswith("Trial text.\n\n")


async def test_an_invalid_answer_is_repaired_once() -> None:
    model = scripted(invalid("confidence: Input should be less than or equal to 1"), ANSWER)
    asker = Asker(model=model)
    asked = await asker.ask(await asker.inputs([msg(1, "hi")], [], include_history=True))
    assert asked.decision == ANSWER
    first, second = model.prompts
    assert (second.system, second.user) == (first.system, first.user)
    assert [t.role for t in second.followups] == ["assistant", "user"]
    assert second.followups[0].content == "Sure!"
    assert "confidence: Input should be less than or equal to 1" in second.followups[1].content
    assert asked.prompt == second


async def test_a_second_invalid_answer_is_a_retryable_failure_not_a_third_call() -> None:
    model = scripted(invalid(), invalid(), ANSWER)
    asker = Asker(model=model)
    with pytest.raises(InvalidModelAnswer) as caught:
        await asker.ask(await asker.inputs([msg(1, "hi")], [], include_history=True))
    assert caught.value.retryable
    assert len(model.prompts) == 2


async def test_refused_images_are_asked_again_once_described_in_words() -> None:
    reader = StaticAttachmentReader(
        {PHOTO: AttachmentContent(image=InlineImage("image/png", b"p"))}
    )
    model = scripted(ImagesRefused("the model endpoint answered 400"), ANSWER)
    asker = Asker(model=model, reader=reader)
    burst = [msg(1, "look", Attachment("image", PHOTO, content_type="image/png"))]
    asked = await asker.ask(await asker.inputs(burst, [], include_history=True))
    assert asked.decision == ANSWER
    with_images, without = model.prompts
    assert len(with_images.images) == 1 and without.images == ()
    assert "[image 1, not shown: images are not shown to you] look" in without.user


async def test_other_model_errors_and_a_refusal_without_images_are_not_retried_here() -> None:
    for error in (ModelError("the model endpoint answered 500"), ImagesRefused("400")):
        model = scripted(error, ANSWER)
        asker = Asker(model=model)
        with pytest.raises(ModelError):
            await asker.ask(await asker.inputs([msg(1, "hi")], [], include_history=True))
        assert len(model.prompts) == 1
