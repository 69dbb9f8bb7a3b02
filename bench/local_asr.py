"""Offline transcription on this machine: joining the packaged model, loading it, real-time factor.

Makes a ~9 s spoken voice note with espeak-ng, encodes it as WhatsApp does (OGG/Opus, mono,
16 kHz) with PyAV, then times what ``TRANSCRIPTION_BACKEND=local`` does: joining the weight
packages' parts into a cache directory (first start only), loading faster-whisper's model
(first voice note of a process), decoding, and transcribing (every voice note), with chatbuffer's
own ``WhisperEngine``. Needs the local-asr extra and espeak-ng; run it alone:

    flock /tmp/bench.lock python3 -m uv run --frozen --extra local-asr python bench/local_asr.py
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import av

from chatbuffer.transcription import audio, packaged_model
from chatbuffer.transcription.local_transcriber import WhisperEngine

TEXT = (
    "Good morning. I ordered a blue jacket last week and it still has not arrived. "
    "The order number is four four one one. Could you tell me when it will be delivered?"
)
RATE = 16_000


def voice_note(text: str) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "140", "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as source, av.open(out, mode="w", format="ogg") as sink:
        stream: Any = sink.add_stream("libopus", rate=RATE, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        for frame in [*source.decode(audio=0), None]:
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    sink.mux(packet)
        for packet in stream.encode(None):
            sink.mux(packet)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="TRANSCRIPTION_LOCAL_THREADS")
    parser.add_argument("--runs", type=int, default=5, help="transcriptions to time")
    args = parser.parse_args()

    note = voice_note(TEXT)
    cache = Path(tempfile.mkdtemp(prefix="chatbuffer-asr-bench-"))
    try:
        started = time.perf_counter()
        directory = packaged_model.model_directory(packaged_model.packaged_files(), cache)
        joined = time.perf_counter() - started

        started = time.perf_counter()
        samples = audio.decode(note, max_seconds=600)
        decoded = time.perf_counter() - started
        seconds = len(samples) / audio.SAMPLE_RATE

        engine = WhisperEngine(model_dir=directory, cache_root=cache, threads=args.threads)
        import faster_whisper  # noqa: F401  (imported before the clock starts: load time only)

        started = time.perf_counter()
        first = engine.transcribe(note)
        first_total = time.perf_counter() - started
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            text = engine.transcribe(note)
            times.append(time.perf_counter() - started)
        assert text == first
        median = statistics.median(times)
        print(f"voice note: {len(note)} bytes OGG/Opus, {seconds:.1f} s of speech")
        print(f"join model parts into the cache (first start): {joined:.2f} s")
        print(f"decode OGG/Opus to 16 kHz mono: {decoded * 1000:.0f} ms")
        print(f"load model (first voice note): {first_total - median:.2f} s")
        print(
            f"transcribe, {args.threads} threads, int8, {args.runs} runs: median {median:.2f} s, "
            f"min {min(times):.2f} s; real-time factor {median / seconds:.2f} "
            f"(min {min(times) / seconds:.2f})"
        )
        print(f"text: {text}")
    finally:
        shutil.rmtree(cache)


if __name__ == "__main__":
    main()
