"""The live controls on both databases: the seed's flags, per-inbox values, the rollout."""

from __future__ import annotations

from chatbuffer.domain import control
from chatbuffer.domain.flags import Flag
from chatbuffer.storage import database
from chatbuffer.storage.controls import SqlControls
from chatbuffer.testing import MemoryControls


async def test_the_seed_flags_are_stored_and_nothing_else(db_url: str) -> None:
    engine = database.create_engine(db_url, pool_size=1)
    try:
        stored = await SqlControls(engine).read_controls()
    finally:
        await engine.dispose()
    assert stored.flags == {
        "message_buffering": True,
        "typing_indicators": True,
        "enhanced_ai_processing": True,
        "response_quality_enhancement": False,
    }
    assert stored.values == {}
    assert stored == await MemoryControls().read_controls()


async def test_written_controls_read_back_as_in_memory(db_url: str) -> None:
    engine = database.create_engine(db_url, pool_size=1)
    memory = MemoryControls()
    try:
        sql = SqlControls(engine)
        for writer in (sql, memory):
            await writer.set_flag(Flag.RESPONSE_QUALITY_ENHANCEMENT, True)
            await writer.set_flag(Flag.TYPING_INDICATORS, False)
            await writer.set_values(
                {
                    control.inbox_flag_name(Flag.TYPING_INDICATORS, 4): "on",
                    control.ROLLOUT_PERCENT: "30",
                    control.canary_name("contact:77"): "on",
                }
            )
            await writer.set_values({control.ROLLOUT_PERCENT: "45", "rollout.canary.inbox:1": None})
        stored = await sql.read_controls()
    finally:
        await engine.dispose()
    assert stored == await memory.read_controls()
    parsed = control.parse(stored.flags, stored.values)
    assert parsed.flags[Flag.RESPONSE_QUALITY_ENHANCEMENT] is True
    assert parsed.inbox_flags == {(Flag.TYPING_INDICATORS, 4): True}
    assert parsed.rollout_percent == 45
    assert parsed.canaries == {"contact:77"}
