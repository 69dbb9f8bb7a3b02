"""The fuzzed service fixture, and the request counts in pytest's summary."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.fuzz.harness import ANSWERS, SENT, Service, running_service

# Hypothesis caches (Unicode tables, constants it collects from our code) would otherwise land in
# .hypothesis/ in the working tree; the examples database itself is off in the tests' settings.
_HYPOTHESIS_HOME = Path(tempfile.mkdtemp(prefix="chatbuffer-fuzz-hypothesis-"))
set_hypothesis_home_dir(_HYPOTHESIS_HOME)

_CALL_PASSED = pytest.StashKey[bool]()


def pytest_sessionfinish() -> None:
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@pytest.fixture
def service(request: pytest.FixtureRequest, db_url: str) -> Iterator[Service]:
    """The app on one database for a whole fuzz test; healthy afterwards, or the test errors."""
    with running_service(db_url) as running:
        yield running
        # After a failure the service's state is the failure's; a second report adds nothing.
        if request.node.stash.get(_CALL_PASSED, False):
            running.assert_healthy()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SENT:
        return
    write = terminalreporter.write_line
    terminalreporter.section("webhook fuzzing")
    for (generator, backend), count in sorted(SENT.items()):
        write(f"{generator:<13} {backend:<9} {count:>6} requests")
    write(f"{'total':<23} {sum(SENT.values()):>6} requests")
    for (generator, status, outcome), count in sorted(ANSWERS.items()):
        write(f"{generator:<13} {status} {outcome:<10} {count:>6}")
