"""Hypothesis strategies for webhook requests: garbage on the wire, and realistic Chatwoot events
with their fields broken in the ways a buggy proxy, an old Chatwoot or an attacker would.

Bodies are serialised with the standard ``json`` module on purpose: unlike ``orjson`` it writes
integers of any size, ``NaN`` and non-ASCII escapes, which the service's parser must all survive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

from chatbuffer.intake.signature import expected_signature
from chatbuffer.simulator import payloads
from tests.integration.test_web import ACCOUNT, CONVERSATION, MAX_BODY

Json = Any
JsonPath = tuple[str | int, ...]

EVENTS = [
    "message_created",
    "message_updated",
    "conversation_status_changed",
    "conversation_updated",
    "conversation_resolved",
    "conversation_opened",
    "contact_created",
    "webwidget_triggered",
]
STATUSES = ["pending", "open", "resolved", "snoozed"]
_EVENTS = st.sampled_from(tuple(EVENTS))

# Integers at the edges of the types the ids pass through: PostgreSQL integer and bigint,
# JavaScript's safe range, unsigned 64-bit, and beyond anything a database holds.
EDGE_INTS = [
    0,
    -1,
    1,
    2**15,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**30),
]

edge_ints = st.sampled_from(EDGE_INTS)
# Large magnitudes by shifting: hypothesis draws a huge-range integer about twice as slowly.
any_ints = st.one_of(
    edge_ints,
    st.integers(-(2**63), 2**63),
    st.builds(lambda bits, n: n << bits, st.integers(0, 80), st.integers(-1000, 1000)),
)

# NUL, a lone surrogate (unencodable), right-to-left marks and astral emoji: text the store and
# the JSON encoders on both sides must survive.
TRICKY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\n\r\t",
    "\u202egnp.exe",
    "\ufeff",
    "💬🇧🇷👍🏽",
    "ção ñ ü 中文 العربية",
    "null",
    "true",
    "0",
    "-1",
    "1e400",
    "NaN",
    "pending",
    "incoming",
    "outgoing",
    "agent_bot",
    "user",
    "message_created",
    "conversation_status_changed",
    "'; DROP TABLE buffered_messages; --",
    "%s%s%s%n",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
]
# Short: a realistic body is ~2.2 KB of the 4 KB cap, and an astral character escapes to 12 bytes.
texts = st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=24), st.text(max_size=120))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    any_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)


# Two levels at most (deep_nesting covers depth): st.recursive costs three times as much.
_shallow = st.one_of(
    scalars, st.lists(scalars, max_size=4), st.dictionaries(texts, scalars, max_size=4)
)
junk: st.SearchStrategy[Json] = st.one_of(
    _shallow, st.lists(_shallow, max_size=3), st.dictionaries(texts, _shallow, max_size=3)
)


_DEPTHS = st.sampled_from((2, 64, 255, 1023, 1024, 1025, 1500))
_SHAPES = st.sampled_from(("list", "object", "alternating"))


@st.composite
def deep_nesting(draw: st.DrawFn) -> Json:
    """Lists and objects nested past any parser's comfort (orjson stops at 1024 levels)."""
    depth = draw(_DEPTHS)
    # One draw for the shape: drawing per level makes a 1500-level example needlessly slow.
    shape = draw(_SHAPES)
    value: Json = draw(scalars)
    for level in range(depth):
        as_list = shape == "list" or (shape == "alternating" and level % 2 == 0)
        value = [value] if as_list else {"a": value}
    return value


_deep_nesting = deep_nesting()


# -- 1a: anything at all ------------------------------------------------------------------


def _dumps(value: Json, *, ascii_only: bool = True, compact: bool = False) -> bytes:
    separators = (",", ":") if compact else None
    return json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode(
        "utf-8", "surrogatepass"
    )


@st.composite
def json_bytes(draw: st.DrawFn, values: st.SearchStrategy[Json]) -> bytes:
    value = draw(values)
    return _dumps(value, ascii_only=draw(st.booleans()), compact=draw(st.booleans()))


@st.composite
def near_cap(draw: st.DrawFn) -> bytes:
    """A JSON object padded to a few bytes either side of the body cap."""
    base = _dumps({"event": draw(_EVENTS), "pad": ""}, compact=True)
    size = MAX_BODY + draw(st.integers(-2, 2))
    return base[:-2] + b"x" * max(0, size - len(base)) + b'"}'


# Hypothesis draws long byte strings slowly; repeating a short one reaches the cap cheaply.
_near_cap_binary = st.builds(
    lambda chunk, size: (chunk * (size // len(chunk) + 1))[:size],
    st.binary(min_size=1, max_size=16),
    st.integers(MAX_BODY - 4, MAX_BODY + 4),
)

arbitrary_bodies: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=256),
    _near_cap_binary,
    st.text(max_size=200).map(lambda s: s.encode("utf-8")),
    json_bytes(junk),
    json_bytes(_deep_nesting),
    json_bytes(st.dictionaries(st.sampled_from(["event", "id", "account", *EVENTS]), junk)),
    st.sampled_from(
        [
            b"",
            b"{",
            b"}",
            b"[]",
            b"{}",
            b"null",
            b"NaN",
            b"\xef\xbb\xbf{}",
            b'{"event": "message_created"}',
            b'{"a": "\\ud800"}',
            b'{"a": 1e400}',
            b'{"a": 123456789012345678901234567890}',
            b'{"event": "message_created", "event": 5}',
            b"\x00" * 64,
        ]
    ),
    near_cap(),
)


# -- headers ------------------------------------------------------------------------------

# What an HTTP/1.1 server passes on in a header value: visible ASCII, space, tab and obs-text.
_HEADER_CHARS = "\t" + "".join(chr(c) for c in range(0x20, 0x100) if not 0x7F <= c < 0xA0)
header_text = st.text(_HEADER_CHARS, max_size=80)
_HEADER_NAMES = st.one_of(
    st.sampled_from(
        (
            "x-chatwoot-delivery",
            "x-chatwoot-signature",
            "x-chatwoot-timestamp",
            "transfer-encoding",
            "content-encoding",
            "expect",
            "host",
        )
    ),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).map("x-".__add__),
)


@dataclass(frozen=True)
class Stamp:
    """How to fill X-Chatwoot-Timestamp: ``offset`` seconds from now, or a literal string."""

    offset: int | None = None
    literal: str | None = None

    def render(self, now: int) -> str:
        return self.literal if self.literal is not None else str(now + (self.offset or 0))


stamps: st.SearchStrategy[Stamp] = st.one_of(
    st.integers(-400, 400).map(lambda s: Stamp(offset=s)),
    st.sampled_from([-301, -300, 0, 300, 301, -(10**9), 10**12]).map(lambda s: Stamp(offset=s)),
    st.builds(Stamp, literal=header_text),
    # Numbers a float cannot hold, and numbers past Python's int-parsing limit.
    st.integers(300, 5000).map(lambda n: Stamp(literal="9" * n)),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-0",
            "+1",
            "-1",
            "1e9",
            "1.5",
            "NaN",
            "inf",
            "0x10",
            "1_000",
            " 1 ",
            "١٢٣",
            str(2**63),
            str(-(2**63) - 1),
            "1" + "0" * 400,
            "-" + "9" * 400,
        ]
    ).map(lambda s: Stamp(literal=s)),
)


@dataclass(frozen=True)
class Signature:
    """How to fill X-Chatwoot-Signature for a body."""

    kind: str
    literal: str = ""

    def render(self, secret: str, stamp: str, body: bytes) -> str:
        if self.kind == "valid":
            return expected_signature(secret, stamp, body)
        if self.kind == "wrong-secret":
            return expected_signature(secret + "x", stamp, body)
        if self.kind == "other-body":
            return expected_signature(secret, stamp, body + b" ")
        if self.kind == "upper":
            return expected_signature(secret, stamp, body).upper()
        if self.kind == "bare-hex":
            return expected_signature(secret, stamp, body).removeprefix("sha256=")
        return self.literal


signatures: st.SearchStrategy[Signature] = st.one_of(
    st.sampled_from(["valid", "wrong-secret", "other-body", "upper", "bare-hex"]).map(Signature),
    st.builds(Signature, kind=st.just("literal"), literal=header_text),
    st.text("0123456789abcdef", min_size=64, max_size=64).map(
        lambda h: Signature("literal", "sha256=" + h)
    ),
    st.sampled_from(["", "sha256=", "sha1=abc", "sha256=" + "0" * 64, "sha256=" + "g" * 64]).map(
        lambda s: Signature("literal", s)
    ),
)

content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ]
    ),
    header_text,
)

# A Content-Length that lies; the in-process transport passes it to the app unchanged.
content_lengths = st.one_of(
    st.sampled_from(["", "abc", "-1", "0", "1", str(MAX_BODY), str(MAX_BODY + 1), "9" * 40]),
    header_text,
)


@dataclass(frozen=True)
class Headers:
    """A recipe for the headers of one request; rendered once the body and clock are known."""

    stamp: Stamp | None
    signature: Signature | None
    content_type: str | None
    content_length: str | None
    extra: tuple[tuple[str, str], ...]
    duplicate_signature: bool

    def render(self, secret: str, now: int, body: bytes) -> list[tuple[bytes, bytes]]:
        stamp = self.stamp.render(now) if self.stamp is not None else str(now)
        out: list[tuple[str, str]] = []
        if self.stamp is not None:
            out.append(("x-chatwoot-timestamp", stamp))
        if self.signature is not None:
            value = self.signature.render(secret, stamp, body)
            out.append(("x-chatwoot-signature", value))
            if self.duplicate_signature:
                out.append(("x-chatwoot-signature", "sha256=" + "0" * 64))
        if self.content_type is not None:
            out.append(("content-type", self.content_type))
        if self.content_length is not None:
            out.append(("content-length", self.content_length))
        out.extend(self.extra)
        return [(k.encode("latin-1"), _latin1(v)) for k, v in out]


def _latin1(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


_extra_headers = st.just(()) | st.lists(st.tuples(_HEADER_NAMES, header_text), max_size=2).map(
    tuple
)
_rare_content_length = st.one_of(st.none(), st.none(), st.none(), content_lengths)

# Half the requests are authentic (the secret, inside the window), so garbage bodies also reach
# the parser and the store; the other half attack the signature check itself.
header_recipes: st.SearchStrategy[Headers] = st.one_of(
    st.builds(
        Headers,
        stamp=st.integers(-300, 300).map(lambda s: Stamp(offset=s)),
        signature=st.just(Signature("valid")),
        content_type=st.none() | content_types,
        content_length=_rare_content_length,
        extra=_extra_headers,
        duplicate_signature=st.just(False),
    ),
    st.builds(
        Headers,
        stamp=st.none() | stamps,
        signature=st.none() | signatures,
        content_type=st.none() | content_types,
        content_length=_rare_content_length,
        extra=_extra_headers,
        duplicate_signature=st.booleans(),
    ),
)


# -- 1b: realistic events, then broken ----------------------------------------------------

# Valid ids and an active conversation by default, so the mutations decide the outcome (they
# put junk in exactly these fields often enough). Small pools make deliveries meet: one
# conversation gets many messages, and message ids repeat (duplicates, updates of a stored one).
conversation_ids = st.sampled_from((1, 2, 3, 4, 5, 6, CONVERSATION))
message_ids = st.one_of(st.integers(1, 30), st.integers(1, 2**31), st.integers(1, 2**63 - 1))
account_ids = st.sampled_from((ACCOUNT,) * 19 + (ACCOUNT + 1,))
statuses = st.sampled_from(("pending",) * 16 + tuple(STATUSES))


_FILE_TYPES: st.SearchStrategy[payloads.FileType] = st.sampled_from(("audio", "image", "file"))
_DATA_URLS = st.sampled_from(("https://chatwoot.test/rails/blob/1", "")) | texts
_VALUE_KINDS = st.sampled_from(
    ("scalar", "scalar", "scalar", "junk", "junk", "delete", "null", "long", "deep")
)
_FILLERS = st.sampled_from(("x", "é", "💬", "\x00"))
_SKEWS = st.sampled_from((0, 0, 0, -300, 300, -1, 1))
_ADVANCES = st.sampled_from((0, 0, 0, 0, 1, 5, 31, 301, 3601))


def _where(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "account_id": draw(account_ids),
        "conversation_id": draw(conversation_ids),
        "status": draw(statuses),
    }


_KINDS = st.sampled_from(
    (
        *("incoming_text",) * 8,
        *("incoming_attachment",) * 2,
        *("voice_note_update",) * 2,
        "agent_reply",
        "phone_echo",
        "bot_reply",
        "private_note",
        "conversation_status_changed",
        "other_event",
    )
)
_CAPTIONS = st.none() | texts
_BOT_ATTRIBUTES = st.none() | st.just({"chatbuffer": {"buffer_id": "x"}})
_PREVIOUS_STATUSES = st.none() | st.sampled_from(tuple(STATUSES))


def base_event(draw: st.DrawFn, now: datetime) -> dict[str, Any]:
    """One event from the simulator's builders, with drawn ids, statuses and texts."""
    kind = draw(_KINDS)
    where = _where(draw)
    message_id = draw(message_ids)
    content = draw(texts)
    if kind == "incoming_text":
        return payloads.incoming_text(
            message_id=message_id, content=content, created_at=now, **where
        )
    if kind in {"incoming_attachment", "voice_note_update"}:
        update = kind == "voice_note_update"
        return payloads.incoming_attachment(
            message_id=message_id,
            created_at=now,
            file_type="audio" if update else draw(_FILE_TYPES),
            data_url=draw(_DATA_URLS),
            transcribed_text=draw(texts) if update else "",
            content=draw(_CAPTIONS),
            event="message_updated" if update else "message_created",
            **where,
        )
    if kind == "agent_reply":
        return payloads.agent_reply(message_id=message_id, content=content, created_at=now, **where)
    if kind == "phone_echo":
        return payloads.phone_echo(message_id=message_id, content=content, created_at=now, **where)
    if kind == "bot_reply":
        return payloads.bot_reply(
            message_id=message_id,
            content=content,
            created_at=now,
            content_attributes=draw(_BOT_ATTRIBUTES),
            **where,
        )
    if kind == "private_note":
        return payloads.private_note(
            message_id=message_id, content=content, created_at=now, **where
        )
    if kind == "conversation_status_changed":
        status = where.pop("status")
        return payloads.conversation_status_changed(
            status=status,
            previous_status=draw(_PREVIOUS_STATUSES),
            at=now,
            **where,
        )
    return {
        "event": draw(_EVENTS),
        "id": message_id,
        "account": {"id": where["account_id"]},
        "conversation": {"id": where["conversation_id"], "status": where["status"]},
    }


def paths(value: Json, prefix: JsonPath = (), depth: int = 6) -> list[JsonPath]:
    """Places in a JSON document (the root excluded), parents first, down to ``depth`` levels:
    the intake reads nothing deeper, and walking a 1500-level nest costs more than it finds."""
    found: list[JsonPath] = []
    if depth == 0:
        return found
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*prefix, key))
            found.extend(paths(child, (*prefix, key), depth - 1))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*prefix, index))
            found.extend(paths(child, (*prefix, index), depth - 1))
    return found


# The fields the intake reads; a third of the mutations aim here. Hypothesis favours the first
# entries, so "event" comes last and most events keep their type.
READ_PATHS: list[JsonPath] = [
    ("content",),
    ("conversation", "id"),
    ("id",),
    ("account", "id"),
    ("content_type",),
    ("content_attributes",),
    ("content_attributes", "chatbuffer"),
    ("content_attributes", "external_echo"),
    ("message_type",),
    ("private",),
    ("created_at",),
    ("sender",),
    ("sender", "id"),
    ("sender", "name"),
    ("sender", "type"),
    ("account",),
    ("conversation",),
    ("conversation", "status"),
    ("conversation", "channel"),
    ("conversation", "inbox_id"),
    ("attachments",),
    ("attachments", 0),
    ("attachments", 0, "file_type"),
    ("attachments", 0, "data_url"),
    ("attachments", 0, "transcribed_text"),
    ("attachments", 0, "content_type"),
    ("attachments", 0, "file_size"),
    ("status",),
    ("event",),
]

_READ_PATHS = st.sampled_from(tuple(READ_PATHS))
_AIM_AT_READ_PATH = st.sampled_from((True, False, False))
_MUTATION_COUNTS = st.sampled_from((0, 0, 0, 1, 1, 1, 2, 2, 3, 4))
_DELETE = object()

# Ids and sizes get edge values half of the time: a value that passes validation but not the
# column it is stored in is found only here.
_NUMERIC_KEYS = frozenset({"id", "inbox_id", "file_size"})
# Hypothesis favours the first entries of sampled_from: the values that pass validation but not
# every column come first.
_ID_VALUES = st.one_of(
    st.sampled_from((2**31, 2**63 - 1, 2**31 - 1, 2**32, 2**53 + 1, 2**63, 2**64, 10**30)),
    st.sampled_from((0, -1, -(2**31) - 1, -(2**63) - 1, "1", "2147483648", " 1", "1e3")),
    st.sampled_from((1.0, 1.5, 1e19, True, None, [], {})),
)


@dataclass(frozen=True)
class Mutation:
    path: JsonPath
    value: Json  # ``_DELETE`` removes the key

    def __repr__(self) -> str:
        shown = "<delete>" if self.value is _DELETE else repr(self.value)[:200]
        return f"Mutation({self.path!r}, {shown})"


def apply(document: Json, mutation: Mutation) -> Json:
    """Set (creating parents as needed) or delete ``path``; a path through a scalar replaces it."""
    if not mutation.path:
        return document if mutation.value is _DELETE else mutation.value
    head, *rest = mutation.path
    child_mutation = Mutation(tuple(rest), mutation.value)
    if isinstance(document, dict) and isinstance(head, str):
        out = dict(document)
        if not rest and mutation.value is _DELETE:
            out.pop(head, None)
        else:
            out[head] = apply(out.get(head), child_mutation)
        return out
    if isinstance(document, list) and isinstance(head, int):
        out_list = list(document)
        if head >= len(out_list):
            out_list.append(None)
            head = len(out_list) - 1
        if not rest and mutation.value is _DELETE:
            del out_list[head]
        else:
            out_list[head] = apply(out_list[head], child_mutation)
        return out_list
    if mutation.value is _DELETE:
        return document
    fresh: Json = {} if isinstance(head, str) else []
    return apply(fresh, Mutation(mutation.path, mutation.value))


# Plain functions taking ``draw``, not composites: a composite called with arguments builds and
# validates a new strategy on every draw, which was a third of the generation time.
def mutation_value(draw: st.DrawFn, room: int) -> Json:
    """A replacement value; ``room`` is how many bytes the body may still grow by."""
    kind = draw(_VALUE_KINDS)
    if kind == "scalar":
        return draw(scalars)
    if kind == "junk":
        return draw(junk)
    if kind == "delete":
        return _DELETE
    if kind == "null":
        return None
    if kind == "long":
        # Grows the body to within a few bytes of the cap, either side of it (exactly so when
        # the body is written ASCII-escaped), so both sides of the size check are hit.
        filler = draw(_FILLERS)
        escaped = len(json.dumps(filler)) - 2
        return filler * (max(0, room - 2 + draw(st.integers(-8, 8))) // escaped)
    return draw(_deep_nesting)


def mutation(draw: st.DrawFn, document: Json, room: int) -> Mutation:
    candidates = paths(document)
    if draw(_AIM_AT_READ_PATH) or not candidates:
        path = draw(_READ_PATHS)
    else:
        # An index, not sampled_from(candidates): that would build a new strategy per draw.
        path = candidates[draw(st.integers(0, len(candidates) - 1))]
    if path[-1] in _NUMERIC_KEYS and draw(st.booleans()):
        return Mutation(path, draw(_ID_VALUES))
    return Mutation(path, mutation_value(draw, room))


@dataclass(frozen=True)
class MutatedEvent:
    """A realistic event with its mutations applied, serialised, and how to sign it."""

    body: bytes
    mutations: tuple[Mutation, ...]
    skew_s: int
    advance_s: int
    streamed: bool


@st.composite
def mutated_events(draw: st.DrawFn, now: Callable[[], datetime]) -> MutatedEvent:
    document: Json = base_event(draw, now())
    applied: list[Mutation] = []
    for _ in range(draw(_MUTATION_COUNTS)):
        room = MAX_BODY - len(_dumps(document, compact=True))
        change = mutation(draw, document, room)
        document = apply(document, change)
        applied.append(change)
    body = _dumps(document, ascii_only=draw(st.booleans()), compact=draw(st.booleans()))
    return MutatedEvent(
        body=body,
        mutations=tuple(applied),
        # Anywhere inside the signature window: these requests must never be refused with 401.
        skew_s=draw(_SKEWS),
        # Time passing between deliveries closes buffers and ends human-takeover pauses.
        advance_s=draw(_ADVANCES),
        streamed=draw(st.booleans()),
    )
