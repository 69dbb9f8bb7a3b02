"""The parts of metrics and logging that need no database: why a buffer closed, the label an ignore
reason is counted under, JSON log lines, the settings, and the worker's metrics listener."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from pydantic import ValidationError

from chatbuffer.domain.buffer import BufferPolicy, BufferWindow, close_reason
from chatbuffer.errors import ConfigurationError
from chatbuffer.intake.webhook import IntakeRules, classify, parse
from chatbuffer.observability import logging as log_setup
from chatbuffer.observability.measured import MeasuredChatwoot, MeasuredStore
from chatbuffer.observability.metrics import Metrics, handoff_slug, ignored_slug
from chatbuffer.observability.server import metrics_listener
from chatbuffer.settings import Settings
from chatbuffer.simulator import payloads
from chatbuffer.testing import FakeClock, RecordingChatwoot

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
POLICY = BufferPolicy(
    quiet_period=timedelta(seconds=30), max_age=timedelta(seconds=300), max_size=5
)


def window(last_s: float, count: int) -> BufferWindow:
    return BufferWindow(T0, T0 + timedelta(seconds=last_s), count)


@pytest.mark.parametrize(
    ("last_s", "count", "due_s", "reason"),
    [
        (10, 3, 40, "quiet"),
        # A shorter quiet period chosen for the conversation (smart windows) is still quiet.
        (10, 2, 18, "quiet"),
        (290, 4, 300, "max_age"),
        (12, 5, 12, "max_size"),
        # Outside the buffered path: the message closes its own buffer at once.
        (0, 1, 0, "max_size"),
    ],
)
def test_a_buffer_closes_for_one_reason(last_s: float, count: int, due_s: float, reason: str):
    due = T0 + timedelta(seconds=due_s)
    assert close_reason(window(last_s, count), due, POLICY) == reason


def _ignore_reason(body: dict[str, object]) -> str:
    action = classify(parse(body), IntakeRules(active_statuses=frozenset({"pending"})), T0)
    reason = getattr(action, "reason", None)
    assert isinstance(reason, str), action
    return reason


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (
            payloads.incoming_text(
                account_id=1,
                conversation_id=2,
                message_id=3,
                content="x",
                created_at=T0,
                status="resolved",
            ),
            "ignored_conversation_not_active",
        ),
        (
            payloads.private_note(
                account_id=1, conversation_id=2, message_id=4, content="x", created_at=T0
            ),
            "ignored_private_note",
        ),
        ({"event": "contact_created", "account": {"id": 1}}, "ignored_unhandled_event"),
    ],
)
def test_the_intakes_ignore_reasons_have_labels_of_their_own(body, outcome: str) -> None:
    assert ignored_slug(_ignore_reason(body)) == outcome


def test_reasons_outside_the_known_set_share_one_label() -> None:
    assert ignored_slug("a human agent is handling this conversation") == "ignored_human_pause"
    assert ignored_slug("account is not served by this chatbuffer") == "ignored_account_mismatch"
    assert ignored_slug("something new in a later version") == "ignored_other"
    assert handoff_slug("confidence 0.41 is below the threshold 0.70 (intent: x)") == (
        "low_confidence"
    )
    assert handoff_slug("the model asked for a human (intent: refund)") == "model_action"
    assert handoff_slug("control_word") == "control_word"
    assert handoff_slug("something new in a later version") == "other"


def test_json_lines_are_whole_records_even_with_a_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_setup.JsonFormatter())
    logger = logging.getLogger("chatbuffer.test_json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("buffer_processed", extra={"bufferId": "b1", "messageCount": 3, "at": T0})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "buffer_processed"
    assert first["bufferId"] == "b1"
    assert first["messageCount"] == 3
    assert first["at"] == T0.isoformat()
    assert first["level"] == "INFO"
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"]


def test_log_settings_take_any_case_and_refuse_unknown_formats() -> None:
    settings = Settings(log_level="debug", log_format="JSON")
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    with pytest.raises(ValidationError):
        Settings(log_format="xml")


async def test_chatwoot_calls_are_timed_by_endpoint_and_answer() -> None:
    from chatbuffer.domain.model import ConversationKey
    from chatbuffer.errors import ChatwootError

    clock = FakeClock(T0)
    metrics = Metrics(clock)
    inner = RecordingChatwoot(fail_with=[ChatwootError("refused", status=422, retryable=False)])
    chatwoot = MeasuredChatwoot(inner, metrics, clock)
    key = ConversationKey(1, 2)
    with pytest.raises(ChatwootError):
        await chatwoot.send_message(key, "hi")
    await chatwoot.send_message(key, "hi")
    page = (await metrics.render()).decode()
    assert (
        'chatbuffer_chatwoot_request_duration_seconds_count{endpoint="create_message",'
        'status="422"} 1.0'
    ) in page
    assert (
        'chatbuffer_chatwoot_request_duration_seconds_count{endpoint="create_message",'
        'status="ok"} 1.0'
    ) in page


async def test_a_measured_store_passes_everything_through() -> None:
    class Store:
        engine = "the engine"

        async def claim_due(self, limit: int) -> list[int]:
            return list(range(limit))

    clock = FakeClock(T0)
    metrics = Metrics(clock)
    store = MeasuredStore(Store(), metrics, clock)
    assert await store.claim_due(3) == [0, 1, 2]
    assert store.engine == "the engine"
    page = (await metrics.render()).decode()
    assert 'chatbuffer_db_statement_duration_seconds_count{operation="claim_due"} 1.0' in page


async def test_the_worker_listener_serves_metrics_and_health_and_refuses_a_taken_port() -> None:
    async def page() -> tuple[bytes, str]:
        return b"chatbuffer_up 1\n", "text/plain; version=0.0.4"

    async with metrics_listener(page, "127.0.0.1", 0) as port:
        async with httpx2.AsyncClient(trust_env=False, timeout=5) as client:
            metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
            missing = await client.get(f"http://127.0.0.1:{port}/other")
        with pytest.raises(ConfigurationError, match=f"metrics on 127.0.0.1:{port}"):
            async with metrics_listener(page, "127.0.0.1", port):
                pass
    assert (metrics.status_code, metrics.text) == (200, "chatbuffer_up 1\n")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert missing.status_code == 404


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_shipped_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = set()
    for family in Metrics(FakeClock(T0)).registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
        exported |= {family.name + end for end in suffixes.get(family.type, ("",))}
    named = set()
    for path in [*DEPLOY.glob("prometheus/*.yml"), *DEPLOY.glob("grafana/*.json")]:
        named |= set(re.findall(r"\b(chatbuffer_[a-z_]+)", path.read_text()))
    # The gauges are the database's: read at scrape time, absent until a database is connected.
    exported |= {"chatbuffer_open_buffers", "chatbuffer_due_buffers"}
    assert named, "the deploy folder lost its rules"
    assert named - exported == set()
