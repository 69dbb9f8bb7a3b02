"""The shipped Prometheus rules load and behave: ``promtool check rules`` accepts them and
``promtool test rules`` replays series through them (the alerts fire on what they are for and stay
quiet on a healthy service).

CI installs promtool (Debian's prometheus package) and sets ``CHATBUFFER_REQUIRE_PROMTOOL=1``, so
there a missing promtool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CHATBUFFER_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", "chatbuffer-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_fire_on_the_series_they_are_for(promtool: str) -> None:
    result = _run(promtool, "test", "rules", "chatbuffer-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_refused(promtool: str, tmp_path: Path) -> None:
    """The check can fail: an expression that does not parse is reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(\n"
    )
    result = _run(promtool, "check", "rules", str(broken))
    assert result.returncode != 0
