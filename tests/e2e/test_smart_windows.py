"""Smart windows in a running service, turned on by the CLI: a burst that ends in a question
after a long message is answered before the fixed window would have closed it; a burst that does
not still waits the whole window."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from chatbuffer.storage import database
from chatbuffer.storage.tables import smart_windows
from tests.e2e.conftest import ACCOUNT, Service, free_port, simulators
from tests.e2e.test_controls import cli

pytestmark = pytest.mark.e2e

#: A fixed window long enough to tell apart from the fast track on a loaded machine.
FIXED_MS = 5_000
FAST_MS = 500


async def test_the_fast_track_answers_a_finished_question_before_the_fixed_window(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'windows.db'}"
    port = free_port()
    async with simulators(port) as sims:
        env = sims.service_env(
            db_url,
            MESSAGE_BUFFER_DURATION_MS=str(FIXED_MS),
            SMART_WINDOW_FAST_TRACK_MS=str(FAST_MS),
        )
        assert cli(env, "migrate").returncode == 0
        turned_on = cli(env, "flags", "set", "smart_window_fast_track", "on")
        assert turned_on.returncode == 0, turned_on.stderr
        service = Service(env=env, port=port, log=tmp_path / "service.log")
        await service.start()
        try:
            world = sims.world(service)
            await world.say(
                61,
                "I ordered the blue jacket last week, paid by card, and the tracking page "
                "still shows nothing at all",
            )
            await world.say(61, "can you check where it is?")
            asked_at = time.monotonic()
            await world.say(62, "hi")
            waiting_since = time.monotonic()

            [reply] = await world.wait_for_replies(61, 1, FIXED_MS / 1000)
            answered_in = time.monotonic() - asked_at
            # Well before the fixed window; the bound leaves room for a slow machine.
            assert answered_in < FIXED_MS / 1000 - 1.5, answered_in
            assert "Thanks for your 2 messages" in reply["content"]

            # The greeting is not a finished question: it waits the whole fixed window.
            assert world.replies(62) == []
            assert len(await world.wait_for_replies(62, 1, FIXED_MS / 1000 + 2)) == 1
            assert time.monotonic() - waiting_since >= FIXED_MS / 1000 - 0.05
        finally:
            await service.stop()

    engine = create_engine(database.sync_url(db_url))
    try:
        with engine.connect() as conn:
            rows = {
                r.conversation_id: r
                for r in conn.execute(
                    select(smart_windows).where(smart_windows.c.account_id == ACCOUNT)
                )
            }
    finally:
        engine.dispose()
    assert rows[61].quiet_ms == FAST_MS
    assert [shape[1] for shape in rows[61].burst] == [False, True]
    assert rows[62].quiet_ms == FIXED_MS
