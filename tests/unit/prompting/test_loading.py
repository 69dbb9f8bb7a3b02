"""The operator's prompt files at start-up: instructions per inbox, the template, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbuffer.errors import ConfigurationError
from chatbuffer.prompting.loading import MAX_FILE_BYTES, load_instructions, load_template
from chatbuffer.prompting.template import PromptTemplate, shipped_source


def test_no_settings_mean_no_instructions_and_the_shipped_template() -> None:
    instructions = load_instructions(None, None, None)
    assert instructions.for_inbox(4) == instructions.for_inbox(None) == ""
    assert load_template(None) is PromptTemplate.shipped()


def test_an_inbox_file_replaces_the_default_for_that_inbox_only(tmp_path: Path) -> None:
    default = tmp_path / "bot.md"
    default.write_text("# Acme\nWe sell bikes.\n", encoding="utf-8")
    inboxes = tmp_path / "inboxes"
    inboxes.mkdir()
    (inboxes / "9.md").write_text("Workshop inbox: we fix bikes.", encoding="utf-8")
    (inboxes / "README.txt").write_text("not an inbox", encoding="utf-8")
    (inboxes / ".7.md.swp").write_text("editor litter", encoding="utf-8")
    instructions = load_instructions(None, default, inboxes)
    assert instructions.for_inbox(4) == "# Acme\nWe sell bikes.\n"
    assert instructions.for_inbox(None) == "# Acme\nWe sell bikes.\n"
    assert instructions.for_inbox(9) == "Workshop inbox: we fix bikes."
    assert load_instructions("Short text.", None, None).for_inbox(9) == "Short text."


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (None, d / "missing.md", None), "BOT_INSTRUCTIONS_FILE is invalid: "),
        (lambda d: (None, d, None), "is not a readable file"),
        (lambda d: ("text", d / "x.md", None), "both set; set only one"),
        (lambda d: (None, None, d / "nowhere"), "BOT_INSTRUCTIONS_DIR is invalid: "),
    ],
)
def test_unusable_instruction_settings_stop_start_up(tmp_path: Path, setup, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_instructions(*setup(tmp_path))


def test_unusable_instruction_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "sales.md").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"sales\.md is not named after an inbox"):
        load_instructions(None, None, tmp_path)
    latin = tmp_path / "latin.md"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"latin\.md is not UTF-8 text"):
        load_instructions(None, latin, None)
    huge = tmp_path / "huge.md"
    huge.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigurationError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        load_instructions(None, huge, None)


def test_an_operators_template_is_loaded_and_a_bad_one_named(tmp_path: Path) -> None:
    mine = tmp_path / "mine.jinja"
    mine.write_text(shipped_source().replace("support agent", "sales assistant"), "utf-8")
    assert "sales assistant" in load_template(mine).source
    mine.write_text("{% block system %}{{ custmer }}{% endblock %}{% block user %}u{% endblock %}")
    with pytest.raises(ConfigurationError) as caught:
        load_template(mine)
    assert str(caught.value) == (
        f"PROMPT_TEMPLATE_FILE is invalid: {mine} line 1, block system: "
        "UndefinedError: 'custmer' is undefined"
    )
    with pytest.raises(ConfigurationError, match=r"PROMPT_TEMPLATE_FILE is invalid: .* not a"):
        load_template(tmp_path / "absent.jinja")
