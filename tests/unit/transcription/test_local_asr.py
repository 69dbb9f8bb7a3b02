"""The offline transcriber on real audio: a WhatsApp-style OGG/Opus voice note made here (speech
from espeak-ng, or a signal from PyAV), decoded with PyAV and transcribed by faster-whisper with
the Whisper model the ``local-asr`` extra installs. Nothing is downloaded.

Needs the extra; without it this module is skipped. Run it with
``python3 -m uv sync --extra local-asr`` then
``python3 -m uv run --frozen --extra local-asr pytest -m local_asr``.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.local_asr
EXTRA = "needs the local-asr extra (uv sync --extra local-asr)"
av = pytest.importorskip("av", reason=EXTRA)
np = pytest.importorskip("numpy", reason=EXTRA)
pytest.importorskip("faster_whisper", reason=EXTRA)

from chatbuffer.app import Runtime  # noqa: E402
from chatbuffer.domain.model import Attachment  # noqa: E402
from chatbuffer.errors import TranscriptionError  # noqa: E402
from chatbuffer.settings import load_settings  # noqa: E402
from chatbuffer.simulator.chatwoot import ChatwootSimulator  # noqa: E402
from chatbuffer.simulator.server import serve_in_background  # noqa: E402
from chatbuffer.transcription import audio  # noqa: E402

#: WhatsApp records voice notes as Opus in OGG, mono, at 16 kHz.
RATE = 16_000
SAID = "Hello, I would like to know where my order is. It has not arrived yet."


def speech_wav(text: str) -> bytes:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    result = subprocess.run(
        [espeak, "-v", "en-us", "-s", "150", "--stdout", text], capture_output=True, check=True
    )
    return result.stdout


def ogg_opus(frames) -> bytes:
    """Encode audio frames (any rate and layout) as a WhatsApp-style OGG/Opus file."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RATE, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        for frame in [*frames, None]:
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def wav_to_ogg_opus(wav: bytes) -> bytes:
    with av.open(io.BytesIO(wav)) as source:
        return ogg_opus(list(source.decode(audio=0)))


def signal_ogg_opus(seconds: float) -> bytes:
    """A voice-like signal without a voice: a gliding, pulsing tone with harmonics."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 140 + 40 * np.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * np.cumsum(pitch) / RATE
    syllables = 0.5 + 0.5 * np.sin(2 * math.pi * 3 * t)
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * syllables * 0.3
    samples = (wave * 32767).astype(np.int16)
    frames = []
    for start in range(0, len(samples), 960):
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frames.append(frame)
    return ogg_opus(frames)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the model is joined, once for the module (it is 145 MB)."""
    return tmp_path_factory.mktemp("asr-cache")


class Chatwoot:
    def __init__(self, simulator: ChatwootSimulator, url: str) -> None:
        self.simulator = simulator
        self.url = url

    def note(self, content: bytes) -> Attachment:
        path = self.simulator.add_file("AUD-20260101-WA0001.ogg", content, "audio/ogg")
        return Attachment(file_type="audio", data_url=f"{self.url}{path}")


@pytest.fixture
async def chatwoot() -> AsyncIterator[Chatwoot]:
    simulator = ChatwootSimulator(api_token="cw-token")
    url, stop = await serve_in_background(simulator.app)
    try:
        yield Chatwoot(simulator, url)
    finally:
        await stop()


async def transcribe_locally(chatwoot: Chatwoot, cache: Path, content: bytes) -> str:
    """Through the worker's own transcriber, as ``TRANSCRIPTION_BACKEND=local`` builds it."""
    runtime = Runtime(
        load_settings(
            database_url="sqlite://",
            chatwoot_base_url=chatwoot.url,
            chatwoot_api_token="cw-token",
            openai_api_key="sk-unused",
            openai_base_url="http://127.0.0.1:1/v1",
            transcription_backend="local",
            transcription_local_cache_dir=cache,
        )
    )
    transcriber = runtime.transcriber()
    assert transcriber is not None
    try:
        return await transcriber.transcribe(chatwoot.note(content))
    finally:
        await runtime.close()


async def test_a_spoken_voice_note_is_transcribed_offline(chatwoot: Chatwoot, cache: Path) -> None:
    note = wav_to_ogg_opus(speech_wav(SAID))
    assert note.startswith(b"OggS") and b"OpusHead" in note[:200]

    text = await transcribe_locally(chatwoot, cache, note)

    words = text.lower()
    for word in ("hello", "know", "where", "my order"):
        assert word in words, text


async def test_a_voice_note_without_words_decodes_and_transcribes_to_text(
    chatwoot: Chatwoot, cache: Path
) -> None:
    note = signal_ogg_opus(4.0)
    assert note.startswith(b"OggS") and b"OpusHead" in note[:200]

    text = await transcribe_locally(chatwoot, cache, note)

    assert isinstance(text, str)


def test_an_opus_note_decodes_to_16_khz_mono_samples() -> None:
    samples = audio.decode(signal_ogg_opus(2.0), max_seconds=60)

    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert abs(len(samples) - 2 * RATE) < RATE // 10
    assert 0.05 < float(np.abs(samples).max()) <= 1.0


def test_a_note_that_is_not_audio_or_too_long_is_given_up_on() -> None:
    with pytest.raises(TranscriptionError, match="could not be decoded") as broken:
        audio.decode(b"OggS but not really" * 50, max_seconds=60)
    assert not broken.value.retryable

    with pytest.raises(TranscriptionError, match="longer than 1 seconds") as long:
        audio.decode(signal_ogg_opus(2.0), max_seconds=1)
    assert not long.value.retryable
