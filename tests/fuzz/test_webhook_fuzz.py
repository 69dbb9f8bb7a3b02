"""Fuzzing ``POST /webhooks/chatwoot`` in-process, on SQLite and on PostgreSQL.

What the suite proves, for well over 10,000 generated requests:

* no request, however malformed, gets a 5xx or escapes as an unhandled exception;
* every refused request (any non-2xx) answers a small JSON ``{"error": "..."}`` and leaves every
  row of every table exactly as it was;
* an accepted request never loses or alters a stored message: it adds at most the one message it
  carries (with that id and that text), and only a voice note's later delivery may change the
  attachments of its own message;
* afterwards the service is still healthy: ``/healthz`` and ``/readyz`` answer 200 and an ordinary
  signed delivery is buffered and stored.

Three generators feed it. Hypothesis strategies of our own send (1) arbitrary bytes and JSON with
missing, garbage or valid signatures and lying headers, and (2) realistic Chatwoot events from
``chatbuffer.simulator.payloads`` with their fields broken, validly signed so they reach the
parser and the store. (3) schemathesis generates requests from the service's own OpenAPI, each sent
as generated and once more validly signed.

Runs are reproducible: hypothesis is derandomized and keeps no example database (its caches go
to a temporary directory, see conftest.py). A failure names the exact request that caused it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from chatbuffer.app import Runtime
from chatbuffer.settings import load_settings
from chatbuffer.simulator import payloads
from chatbuffer.web.asgi import WEBHOOK_PATH
from tests.fuzz import strategies as fz
from tests.fuzz.harness import SENT, Request, Service, header_list
from tests.integration.test_web import ACCOUNT, CONVERSATION, MAX_BODY, SECRET, START

# Ten thousand requests keep a core busy for a minute and a half, and the total at the end
# counts every generator's requests only when one process ran them all: scripts/test runs this
# module in its serial pass, alone, in one process.
pytestmark = pytest.mark.serial

# Requests per generator and database. SQLite alone clears 10,000; PostgreSQL runs fewer because
# each write is a network round trip, but still exercises its stricter types. On a 2-core machine
# the module takes about 35 s on SQLite alone and 50 s with PostgreSQL.
BUDGET = {
    "sqlite": {"arbitrary": 6_000, "mutated": 3_200},
    "postgres": {"arbitrary": 800, "mutated": 800},
}
# Cases per database; each is sent twice (as generated, and validly signed).
SCHEMATHESIS_CASES = 400
REQUIRED_TOTAL = 10_000


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        # No "explain" phase: it replays a failure many times against a database that has moved
        # on since, which is slow and explains nothing.
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )


def _sent(generator: str, backend: str) -> int:
    return SENT[(generator, backend)]


# -- 1: our own strategies ----------------------------------------------------------------
#
# The ``service`` fixture (conftest.py) checks after each test that the service is still healthy.


def _headers(stamp: fz.Stamp, signature: fz.Signature) -> fz.Headers:
    return fz.Headers(stamp, signature, None, None, (), duplicate_signature=False)


def test_arbitrary_requests_get_a_clean_answer(service: Service) -> None:
    budget = BUDGET[service.backend]["arbitrary"]
    start = _sent("arbitrary", service.backend)

    @fuzz_settings(budget)
    @given(body=fz.arbitrary_bodies, recipe=fz.header_recipes, streamed=st.booleans())
    # Found by this suite (503s before any signature was checked): a timestamp too large for
    # a float, and a signature header with a non-ASCII byte.
    @example(b"{}", _headers(fz.Stamp(literal="1" + "0" * 400), fz.Signature("valid")), False)
    @example(b"{}", _headers(fz.Stamp(offset=0), fz.Signature("literal", "\xa0")), False)
    def send(body: bytes, recipe: fz.Headers, streamed: bool) -> None:
        headers = recipe.render(SECRET, service.now_stamp(), body)
        service.exchange(Request(body, headers, streamed), "arbitrary")

    send()

    assert _sent("arbitrary", service.backend) - start >= budget


def _event(document: dict[str, Any]) -> fz.MutatedEvent:
    return fz.MutatedEvent(orjson.dumps(document), (), 0, 0, streamed=False)


def _incoming(**where: Any) -> dict[str, Any]:
    where.setdefault("conversation_id", CONVERSATION)
    content = where.pop("content", "where is my order?")
    return payloads.incoming_text(
        message_id=4242, content=content, created_at=START, account_id=ACCOUNT, **where
    )


def test_signed_broken_events_are_stored_or_refused_cleanly(service: Service) -> None:
    budget = BUDGET[service.backend]["mutated"]
    start = _sent("mutated", service.backend)

    @fuzz_settings(budget)
    @given(event=fz.mutated_events(service.clock.now))
    # Found by this suite (503s on PostgreSQL): ids that pass validation but overflow an
    # integer column, and a NUL character, which PostgreSQL text and jsonb cannot hold.
    @example(_event(_incoming(conversation_id=2**31)))
    @example(
        _event(
            payloads.conversation_status_changed(
                status="resolved", account_id=ACCOUNT, conversation_id=2**31
            )
        )
    )
    @example(_event(_incoming(content="hi\x00")))
    def send(event: fz.MutatedEvent) -> None:
        service.clock.advance(event.advance_s)
        headers = service.sign(event.body, skew_s=event.skew_s)
        done = service.exchange(Request(event.body, headers, event.streamed), "mutated")
        status = done.response.status_code
        # Signed with the secret, inside the window: authentic, whatever the body says.
        assert status != 401, (done.response.text, event)
        assert (status == 413) == (len(event.body) > MAX_BODY), (status, len(event.body), event)

    send()

    assert _sent("mutated", service.backend) - start >= budget


# -- 2: schemathesis, from the service's own OpenAPI --------------------------------------


def _openapi() -> dict[str, Any]:
    # Building the app opens nothing: the runtime only connects when its lifespan starts.
    settings_ = load_settings(database_url="sqlite:///unused.db", chatwoot_webhook_secret=SECRET)
    return Runtime(settings_).asgi(with_worker=False).openapi()


SCHEMA = schemathesis.openapi.from_dict(_openapi()).include(path=WEBHOOK_PATH, method="POST")
_SIGNATURE_HEADERS = {b"x-chatwoot-signature", b"x-chatwoot-timestamp"}


def error_is_json(_ctx: Any, response: Any, _case: Any) -> bool | None:
    """A 4xx names the problem in a JSON object's "error" string."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
    return None


CHECKS = [not_a_server_error, status_code_conformance, error_is_json]


def _wire_body(kwargs: dict[str, Any]) -> bytes:
    # What requests would send for these transport arguments.
    if "json" in kwargs:
        return json.dumps(kwargs["json"], allow_nan=False).encode()
    data = kwargs.get("data", b"")
    return data.encode() if isinstance(data, str) else bytes(data or b"")


@SCHEMA.parametrize()
@fuzz_settings(SCHEMATHESIS_CASES)
def test_schemathesis_cases_get_a_clean_answer(case: schemathesis.Case, service: Service) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://test")
    body = _wire_body(kwargs)
    headers = header_list({k: str(v) for k, v in kwargs["headers"].items()})
    as_generated = service.exchange(Request(body, headers), "schemathesis")
    case.validate_response(as_generated.response, checks=CHECKS)

    # The same body, authentic: past the signature check to the parser and the store.
    signature = [h for h in service.sign(body) if h[0] in _SIGNATURE_HEADERS]
    resigned = [h for h in headers if h[0] not in _SIGNATURE_HEADERS] + signature
    signed = service.exchange(Request(body, resigned), "schemathesis")
    case.validate_response(signed.response, checks=CHECKS)


# -- the totals ---------------------------------------------------------------------------


def test_total_generated_requests() -> None:
    """Runs last in this module; pytest's summary lists the counts ("webhook fuzzing")."""
    if not all(_sent(g, "sqlite") for g in ("arbitrary", "mutated", "schemathesis")):
        pytest.skip("the total is only meaningful after the whole module ran")
    total = sum(SENT.values())
    print(f"fuzz: {total} requests: {dict(sorted(SENT.items()))}")
    assert total >= REQUIRED_TOTAL, dict(SENT)
