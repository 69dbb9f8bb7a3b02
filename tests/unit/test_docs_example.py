"""docs/configuration.md shows the exact request a four-message burst with an image produces:
this keeps that copy equal to what the code sends."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatbuffer.demo import example_request

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


async def test_the_documented_request_is_the_one_the_code_sends() -> None:
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- example-request:[^\n]*-->\n```json\n(.*?)\n```", text, re.DOTALL)
    assert found, "docs/configuration.md lost its example request"
    request = await example_request()
    generated = json.dumps(request, indent=2, ensure_ascii=False)
    assert found[1] == generated, f"paste this into docs/configuration.md:\n{generated}"
    user = request["messages"][1]["content"]
    assert [part["type"] for part in user] == ["text", "text", "image_url"]
    assert "chatwoot.example.com" not in json.dumps(request)
