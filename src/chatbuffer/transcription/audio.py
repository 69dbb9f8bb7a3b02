"""A voice note's bytes as the samples Whisper takes: 16 kHz mono float32, decoded with PyAV.

WhatsApp records OGG/Opus; PyAV's wheels bundle FFmpeg with libopus, so no ``ffmpeg`` binary is
needed, and any other format FFmpeg reads (M4A, MP3, WAV from other channels) works as well.
Imported only by the local transcriber, inside its worker thread: ``av`` and ``numpy`` come with
the ``local-asr`` extra.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

from chatbuffer.errors import TranscriptionError

SAMPLE_RATE = 16_000


def decode(data: bytes, *, max_seconds: float) -> Any:
    """The first audio stream of ``data`` as a 1-D float32 array at 16 kHz.

    A note longer than ``max_seconds`` is refused as soon as the decoder reaches that point: a
    small, highly compressed file must not fill memory with hours of samples.
    """
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[Any] = []
    size = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise TranscriptionError("the voice note has no audio", retryable=False)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for converted in resampler.resample(frame):
                    samples = converted.to_ndarray().reshape(-1)
                    size += len(samples)
                    if size > limit:
                        raise TranscriptionError(
                            f"the voice note is longer than {max_seconds:.0f} seconds",
                            retryable=False,
                        )
                    chunks.append(samples)
            # The resampler holds back its last few samples until told the input has ended.
            chunks.extend(
                converted.to_ndarray().reshape(-1) for converted in resampler.resample(None)
            )
    except av.FFmpegError as exc:
        raise TranscriptionError(
            f"the voice note could not be decoded ({type(exc).__name__})", retryable=False
        ) from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks)
