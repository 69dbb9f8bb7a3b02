"""``MemoryBurstArchive``: the ``BurstArchive`` port over a ``MemoryStore``'s rows."""

from __future__ import annotations

import uuid

from chatbuffer.domain.ports import PostedMessage, StoredBurst, whole_message
from chatbuffer.testing.memory import Buffer, MemoryStore

_ANSWER_KINDS = ("reply", "handoff_note")


class MemoryBurstArchive:
    """Implements :class:`chatbuffer.domain.ports.BurstArchive` with ``SqlBurstArchive``'s rules
    (``tests/integration/test_transcripts.py`` runs both)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def burst(self, buffer_id: uuid.UUID, history_limit: int) -> StoredBurst | None:
        found = self._store.buffers.get(buffer_id)
        if found is None or not self._has_messages(found.id):
            return None
        return self._read(found, history_limit)

    async def recent(self, limit: int, history_limit: int) -> list[StoredBurst]:
        with_messages = [b for b in self._store.buffers.values() if self._has_messages(b.id)]
        with_messages.sort(key=lambda b: (-b.window.last_message_at.timestamp(), str(b.id)))
        return [self._read(b, history_limit) for b in with_messages[:limit]]

    def _has_messages(self, buffer_id: uuid.UUID) -> bool:
        return any(m.buffer_id == buffer_id for m in self._store.messages)

    def _read(self, found: Buffer, history_limit: int) -> StoredBurst:
        store = self._store
        burst = sorted(
            (m.message for m in store.messages if m.buffer_id == found.id),
            key=lambda m: m.chatwoot_message_id,
        )
        by_kind: dict[str, list[PostedMessage]] = {}
        for r in sorted(store.replies, key=lambda r: (r.sent_at, r.part)):
            if r.buffer_id == found.id and r.kind in _ANSWER_KINDS:
                by_kind.setdefault(r.kind, []).append(
                    PostedMessage(r.kind, r.content, r.chatwoot_message_id, r.part)
                )
        answers = {kind: whole_message(parts) for kind, parts in by_kind.items()}
        memory = store.memory.get(found.key)
        summary = memory.summary if memory is not None else None
        history = store.turns(found.key, found.id, burst, summary, history_limit)
        return StoredBurst(
            buffer_id=found.id,
            key=found.key,
            status=found.status,
            messages=burst,
            history=history,
            answer=next((answers[k] for k in _ANSWER_KINDS if k in answers), None),
            last_message_at=found.window.last_message_at,
            summary=summary,
            assessment=store.assessments.get(found.id),
        )
