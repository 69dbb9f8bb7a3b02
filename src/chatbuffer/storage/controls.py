"""``SqlControls``: the live controls (flags, per-inbox flags, the rollout).

Two reference tables, read together by every replica at most every few seconds
(``chatbuffer.flags.CachedControls``) and written by operators (CLI, admin API): the seed's
``feature_flags`` rows and the named values of ``bot_controls``. Never on the hot path's
per-message statements, so it needs no conversation key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatbuffer.domain.flags import Flag
from chatbuffer.domain.ports import StoredControls
from chatbuffer.storage import database
from chatbuffer.storage.tables import bot_controls, feature_flags


class SqlControls:
    """Implements ``ControlSource`` and ``ControlWriter`` over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read_controls(self) -> StoredControls:
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(**{database.READ_ONLY: True})
            flags = (
                await conn.execute(select(feature_flags.c.flag_name, feature_flags.c.is_enabled))
            ).all()
            values = (await conn.execute(select(bot_controls.c.name, bot_controls.c.value))).all()
        return StoredControls(
            flags={r.flag_name: bool(r.is_enabled) for r in flags},
            values={r.name: r.value for r in values},
        )

    async def set_flag(self, flag: Flag, on: bool) -> None:
        async with self._engine.begin() as conn:
            found = await conn.execute(
                update(feature_flags)
                .where(feature_flags.c.flag_name == flag.value)
                .values(is_enabled=on)
            )
            if found.rowcount == 0:
                # The seeded row was deleted by hand: put it back with its description.
                await conn.execute(
                    feature_flags.insert().values(
                        id=uuid.uuid4(),
                        flag_name=flag.value,
                        is_enabled=on,
                        description=flag.description,
                    )
                )

    async def set_values(self, values: Mapping[str, str | None]) -> None:
        """Set (or with None, remove) named values, in one transaction."""
        async with self._engine.begin() as conn:
            for name, value in values.items():
                await conn.execute(delete(bot_controls).where(bot_controls.c.name == name))
                if value is not None:
                    await conn.execute(bot_controls.insert().values(name=name, value=value))
