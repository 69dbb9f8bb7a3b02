"""Reads the operator's prompt files at start-up: the template and the business's instructions.

Every problem (a missing or unreadable file, text that is not UTF-8, a template that does not
render) is a ``ConfigurationError`` that names the setting and the file, so the command stops
with one line and exit code 2 before it serves anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from chatbuffer.domain.instructions import BotInstructions
from chatbuffer.errors import ConfigurationError
from chatbuffer.prompting.template import PromptTemplate, TemplateProblem

#: Instructions and templates go into every model request; a larger file is a mistake.
MAX_FILE_BYTES = 256 * 1024

_INBOX_FILE = re.compile(r"([1-9][0-9]{0,9})\.md")


def load_template(path: Path | None, *, setting: str = "PROMPT_TEMPLATE_FILE") -> PromptTemplate:
    """The operator's template, or the shipped one when ``path`` is None."""
    if path is None:
        return PromptTemplate.shipped()
    source = read_text(path, setting)
    try:
        return PromptTemplate(source, name=str(path))
    except TemplateProblem as exc:
        raise ConfigurationError(f"{setting} is invalid: {exc}") from None


def load_instructions(
    text: str | None, file: Path | None, directory: Path | None
) -> BotInstructions:
    """``BOT_INSTRUCTIONS`` or ``BOT_INSTRUCTIONS_FILE`` as the default, and each
    ``BOT_INSTRUCTIONS_DIR/<inbox_id>.md`` for its inbox."""
    if text is not None and file is not None:
        raise ConfigurationError(
            "BOT_INSTRUCTIONS and BOT_INSTRUCTIONS_FILE are both set; set only one"
        )
    default = text if text is not None else ""
    if file is not None:
        default = read_text(file, "BOT_INSTRUCTIONS_FILE")
    by_inbox: dict[int, str] = {}
    if directory is not None:
        if not directory.is_dir():
            raise ConfigurationError(
                f"BOT_INSTRUCTIONS_DIR is invalid: {directory} is not a readable directory"
            )
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or entry.suffix.lower() != ".md":
                continue
            found = _INBOX_FILE.fullmatch(entry.name)
            if found is None:
                raise ConfigurationError(
                    f"BOT_INSTRUCTIONS_DIR is invalid: {entry.name} is not named after an inbox; "
                    "name each file <inbox_id>.md, e.g. 4.md"
                )
            by_inbox[int(found[1])] = read_text(entry, "BOT_INSTRUCTIONS_DIR")
    return BotInstructions(default=default, by_inbox=by_inbox)


def read_text(path: Path, setting: str) -> str:
    """A UTF-8 text file of at most ``MAX_FILE_BYTES``, or a ``ConfigurationError``."""
    try:
        if not path.is_file():
            raise ConfigurationError(f"{setting} is invalid: {path} is not a readable file")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting} is invalid: {path} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigurationError(
            f"{setting} is invalid: {path} is larger than {MAX_FILE_BYTES} bytes"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{setting} is invalid: {path} is not UTF-8 text") from None
