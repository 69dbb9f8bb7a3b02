"""Joining the weight packages' parts into a model directory: once, whole, and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbuffer.transcription import packaged_model
from chatbuffer.transcription.packaged_model import ModelFiles, model_directory


def files_in(root: Path) -> ModelFiles:
    """A small stand-in for the installed packages: two parts and the three companions."""
    first, second = root / "pkg1" / "data", root / "pkg2" / "data"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "model.bin.part1").write_bytes(b"A" * 1000)
    (second / "model.bin.part2").write_bytes(b"B" * 300)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (second / name).write_text(f'{{"file": "{name}"}}')
    return ModelFiles(
        name="whisper-base-1.0.0-1.0.0",
        parts=(first / "model.bin.part1", second / "model.bin.part2"),
        companions=tuple(
            second / name for name in ("config.json", "tokenizer.json", "vocabulary.json")
        ),
    )


def test_the_parts_are_joined_in_order_beside_the_companions(tmp_path: Path) -> None:
    files = files_in(tmp_path / "site")
    cache = tmp_path / "cache"

    directory = model_directory(files, cache)

    assert directory == cache / "whisper-base-1.0.0-1.0.0"
    assert (directory / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 300
    assert (directory / "tokenizer.json").read_text() == '{"file": "tokenizer.json"}'
    assert sorted(p.name for p in cache.iterdir()) == [directory.name], "no half-built leftovers"


def test_a_whole_model_is_reused_not_rebuilt(tmp_path: Path) -> None:
    files = files_in(tmp_path / "site")
    directory = model_directory(files, tmp_path / "cache")

    files.parts[0].write_bytes(b"C" * 1000)  # a rebuild would copy these
    assert model_directory(files, tmp_path / "cache") == directory
    assert (directory / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 300


def test_a_damaged_model_is_built_again(tmp_path: Path) -> None:
    files = files_in(tmp_path / "site")
    directory = model_directory(files, tmp_path / "cache")
    with (directory / "model.bin").open("r+b") as model:
        model.truncate(700)

    model_directory(files, tmp_path / "cache")

    assert (directory / "model.bin").read_bytes() == b"A" * 1000 + b"B" * 300


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    files = files_in(tmp_path / "site")
    files.companions[1].unlink()

    with pytest.raises(FileNotFoundError):
        model_directory(files, tmp_path / "cache")

    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skipif(not packaged_model.installed(), reason="the local-asr extra is not installed")
def test_the_installed_packages_hold_a_whole_model() -> None:
    files = packaged_model.packaged_files()

    assert [part.name for part in files.parts] == ["model.bin.part1", "model.bin.part2"]
    assert [path.name for path in files.companions] == [
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    ]
    # CTranslate2's model file starts with its format version and the model's name.
    assert b"WhisperSpec" in files.parts[0].read_bytes()[:64]
