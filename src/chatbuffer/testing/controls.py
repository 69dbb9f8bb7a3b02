"""``MemoryControls``: the live controls in memory, with ``SqlControls``' semantics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chatbuffer.domain import flags
from chatbuffer.domain.flags import Flag
from chatbuffer.domain.ports import StoredControls


@dataclass
class MemoryControls:
    """Implements ``ControlSource`` and ``ControlWriter``; the rows are open for tests."""

    flag_rows: dict[str, bool] = field(
        default_factory=lambda: {f.value: f.default for f in flags.SEEDED}
    )
    values: dict[str, str] = field(default_factory=dict)
    reads: int = 0

    async def read_controls(self) -> StoredControls:
        self.reads += 1
        return StoredControls(flags=dict(self.flag_rows), values=dict(self.values))

    async def set_flag(self, flag: Flag, on: bool) -> None:
        self.flag_rows[flag.value] = on

    async def set_values(self, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                self.values.pop(name, None)
            else:
                self.values[name] = value
