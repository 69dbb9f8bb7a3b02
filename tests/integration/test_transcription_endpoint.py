"""Voice notes go to the endpoint, key and model the settings name, over real HTTP on 127.0.0.1:
a Chatwoot fake serves the note, OpenAI-compatible fakes stand for the chat and transcription
endpoints, and the worker's own transcriber (built by ``Runtime``) is asked for the text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from chatbuffer.app import Runtime
from chatbuffer.domain.model import Attachment
from chatbuffer.settings import load_settings
from chatbuffer.simulator.chatwoot import ChatwootSimulator
from chatbuffer.simulator.model import ScriptedModelServer, TranscriptionCall, voice_note
from chatbuffer.simulator.server import serve_in_background

TOKEN = "cw-token"


@dataclass
class Endpoints:
    chatwoot: ChatwootSimulator
    chatwoot_url: str
    chat: ScriptedModelServer
    chat_url: str
    asr: ScriptedModelServer
    asr_url: str

    def note(self, text: str) -> Attachment:
        path = self.chatwoot.add_file("voice.ogg", voice_note(text))
        return Attachment(file_type="audio", data_url=f"{self.chatwoot_url}{path}")

    def runtime(self, **settings: object) -> Runtime:
        return Runtime(
            load_settings(
                database_url="sqlite://",
                chatwoot_base_url=self.chatwoot_url,
                chatwoot_api_token=TOKEN,
                openai_base_url=f"{self.chat_url}/v1",
                openai_api_key="sk-chat",
                **settings,
            )
        )


@pytest.fixture
async def endpoints() -> AsyncIterator[Endpoints]:
    chatwoot = ChatwootSimulator(api_token=TOKEN)
    chat, asr = ScriptedModelServer(), ScriptedModelServer()
    chatwoot_url, stop_chatwoot = await serve_in_background(chatwoot.app)
    chat_url, stop_chat = await serve_in_background(chat.app)
    asr_url, stop_asr = await serve_in_background(asr.app)
    try:
        yield Endpoints(chatwoot, chatwoot_url, chat, chat_url, asr, asr_url)
    finally:
        for stop in (stop_asr, stop_chat, stop_chatwoot):
            await stop()


async def transcribe(runtime: Runtime, note: Attachment) -> str:
    transcriber = runtime.transcriber()
    assert transcriber is not None
    try:
        return await transcriber.transcribe(note)
    finally:
        await runtime.close()


async def test_voice_notes_go_to_the_transcription_endpoint_of_their_own(
    endpoints: Endpoints,
) -> None:
    runtime = endpoints.runtime(
        transcription_base_url=f"{endpoints.asr_url}/v1",
        transcription_api_key="gsk-asr",
        transcription_model="whisper-large-v3-turbo",
    )

    text = await transcribe(runtime, endpoints.note("my order 8080 never came"))

    assert text == "my order 8080 never came"
    assert endpoints.asr.transcription_calls == [
        TranscriptionCall("voice.ogg", "whisper-large-v3-turbo", "gsk-asr")
    ]
    assert endpoints.chat.transcription_calls == []


async def test_without_transcription_settings_the_chat_endpoint_transcribes(
    endpoints: Endpoints,
) -> None:
    text = await transcribe(endpoints.runtime(), endpoints.note("where is my parcel"))

    assert text == "where is my parcel"
    assert endpoints.chat.transcription_calls == [
        TranscriptionCall("voice.ogg", "whisper-1", "sk-chat")
    ]
    assert endpoints.asr.transcription_calls == []


async def test_a_separate_endpoint_uses_the_chat_key_unless_given_its_own(
    endpoints: Endpoints,
) -> None:
    runtime = endpoints.runtime(
        transcription_base_url=f"{endpoints.asr_url}/v1", openai_transcription_model="whisper-x"
    )

    await transcribe(runtime, endpoints.note("hello"))

    assert endpoints.asr.transcription_calls == [
        TranscriptionCall("voice.ogg", "whisper-x", "sk-chat")
    ]
