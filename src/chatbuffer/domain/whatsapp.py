"""Replies that read well on WhatsApp: its own formatting in place of Markdown, and parts short
enough to send.

Models write Markdown; WhatsApp shows ``**bold**`` and ``# Heading`` literally, renders
``*bold*``, ``_italic_``, ``~strike~``, triple-backtick monospace, ``> quotes`` and ``- `` or
``1. `` lists, and refuses text over 4,096 characters. ``to_whatsapp`` rewrites what it can and
leaves code untouched; ``split`` cuts a long reply at paragraph, then sentence, then word
boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

#: WhatsApp's limit for one text message.
WHATSAPP_MAX_CHARS = 4096

_FENCE = re.compile(r"^(\s*)(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_BULLET = re.compile(r"^(\s*)[*+]\s+")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
# Placeholders for what later rules must not touch (code, converted bold); private-use
# characters never appear in a model's text.
_HOLD = "\ue000{}\ue001"
_HELD = re.compile("\ue000(\\d+)\ue001")


def to_whatsapp(markdown: str) -> str:
    """The same reply in WhatsApp's formatting."""
    lines: list[str] = []
    in_fence = False
    table: list[list[str]] = []
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            lines.append("```")
            continue
        if in_fence:
            lines.append(line)
            continue
        if line.strip().startswith("|") and line.strip().endswith("|"):
            if not _TABLE_SEPARATOR.match(line):
                table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if table:
            lines.extend(_table_lines(table))
            table = []
        lines.append(_line(line))
    if table:
        lines.extend(_table_lines(table))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _line(line: str) -> str:
    if _RULE.match(line):
        return ""
    heading = _HEADING.match(line)
    if heading:
        # The whole heading is bold already; bold inside it would end it early.
        plain = _BOLD.sub(r"\2", heading.group(1))
        return f"*{_inline(plain)}*"
    return _BULLET.sub(r"\1- ", _inline(line), count=1)


def _inline(text: str) -> str:
    held: list[str] = []

    def hold(value: str) -> str:
        held.append(value)
        return _HOLD.format(len(held) - 1)

    # Inline code is shown as monospace by WhatsApp too, and nothing inside it is formatting.
    text = _CODE_SPAN.sub(lambda m: hold(f"`{m.group(2)}`"), text)
    text = _IMAGE.sub(lambda m: hold(m.group(2)), text)
    text = _LINK.sub(lambda m: hold(_link(m.group(1), m.group(2))), text)
    # Bold first, held, so its single stars are not read as italics next.
    text = _BOLD.sub(lambda m: hold(f"*{m.group(2)}*"), text)
    text = _ITALIC_STAR.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    while _HELD.search(text):
        text = _HELD.sub(lambda m: held[int(m.group(1))], text)
    return text


def _link(label: str, url: str) -> str:
    # WhatsApp links bare URLs itself; a label is kept beside its address.
    if label.strip() in (url, url.removeprefix("mailto:")):
        return url
    return f"{label} ({url})"


def _table_lines(rows: list[list[str]]) -> Iterator[str]:
    """A table as one line per row, each value named by its column (WhatsApp has no tables)."""
    header, *body = rows
    if not body:
        yield " · ".join(_inline(cell) for cell in header)
        return
    for row in body:
        pairs = [
            f"{_inline(name)}: {_inline(value)}" if name else _inline(value)
            for name, value in zip(header, row, strict=False)
            if value
        ]
        yield "- " + "; ".join(pairs)


# -- splitting --------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def split(text: str, max_chars: int = WHATSAPP_MAX_CHARS) -> list[str]:
    """``text`` as ordered parts of at most ``max_chars`` characters, cut at the largest
    boundary that fits: paragraphs, then lines, then sentences, then words, then anywhere.

    Parts are stripped; joining them with blank lines gives the reply back, give or take the
    whitespace at the cuts.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    return [part for part in _pack(text, max_chars, _SPLITTERS) if part]


def _paragraphs(text: str) -> list[str]:
    return re.split(r"\n\s*\n", text)


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _sentences(text: str) -> list[str]:
    return _SENTENCE_END.split(text)


def _words(text: str) -> list[str]:
    return text.split(" ")


_Splitter = tuple[Callable[[str], list[str]], str]
_SPLITTERS: tuple[_Splitter, ...] = (
    (_paragraphs, "\n\n"),
    (_lines, "\n"),
    (_sentences, " "),
    (_words, " "),
)


def _pack(text: str, limit: int, splitters: tuple[_Splitter, ...]) -> list[str]:
    """Greedily join ``text``'s pieces (by the first splitter) into parts that fit; a piece too
    long on its own is cut by the next splitter, and by characters after the last."""
    if len(text) <= limit:
        return [text.strip()]
    if not splitters:
        return [text[i : i + limit].strip() for i in range(0, len(text), limit)]
    (cut, glue), rest = splitters[0], splitters[1:]
    parts: list[str] = []
    current = ""
    for piece in cut(text):
        piece = piece.strip()
        if not piece:
            continue
        joined = f"{current}{glue}{piece}" if current else piece
        if len(joined) <= limit:
            current = joined
            continue
        if current:
            parts.append(current)
        if len(piece) <= limit:
            current = piece
        else:
            *whole, current = _pack(piece, limit, rest)
            parts.extend(whole)
    if current:
        parts.append(current)
    return parts


def typing_pause(part: str, *, per_char_s: float, cap_s: float) -> float:
    """How long "typing…" shows before a part after the first: proportional to its length, as a
    person would take, and capped so a long answer does not keep the contact waiting."""
    return min(cap_s, max(0.0, per_char_s * len(part)))
