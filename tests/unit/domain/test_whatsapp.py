"""Markdown turned into WhatsApp's formatting, and long replies cut into parts WhatsApp accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatbuffer.domain.whatsapp import WHATSAPP_MAX_CHARS, split, to_whatsapp, typing_pause


@pytest.mark.parametrize(
    ("markdown", "whatsapp"),
    [
        ("Hi **Ana**, see __this__.", "Hi *Ana*, see *this*."),
        ("It is *really* late, _truly_.", "It is _really_ late, _truly_."),
        ("~~old~~ new", "~old~ new"),
        ("# Your order\n\nShipped.", "*Your order*\n\nShipped."),
        ("## **Bold** heading ##", "*Bold heading*"),
        ("* one\n+ two\n- three\n1. four", "- one\n- two\n- three\n1. four"),
        ("Track it [here](https://t.example/1).", "Track it here (https://t.example/1)."),
        ("[https://t.example](https://t.example)", "https://t.example"),
        ("![photo](https://img.example/a.png)", "https://img.example/a.png"),
        ("Use `**raw**` as is", "Use `**raw**` as is"),
        ("```\n**not bold**\n# not a heading\n```", "```\n**not bold**\n# not a heading\n```"),
        ("> quoted *text*", "> quoted _text_"),
        ("above\n\n---\n\nbelow", "above\n\nbelow"),
        ("2 * 3 * 4 = 24", "2 * 3 * 4 = 24"),
        ("snake_case_name stays", "snake_case_name stays"),
    ],
)
def test_markdown_becomes_whatsapp_formatting(markdown: str, whatsapp: str) -> None:
    assert to_whatsapp(markdown) == whatsapp


def test_a_table_becomes_one_line_per_row_with_its_column_names() -> None:
    table = "Prices:\n\n| Item | Price |\n|:-----|------:|\n| Shoes | $40 |\n| Socks | $5 |\n\nOk"
    assert to_whatsapp(table) == (
        "Prices:\n\n- Item: Shoes; Price: $40\n- Item: Socks; Price: $5\n\nOk"
    )


def test_a_short_reply_is_one_part() -> None:
    assert split("  Hello there.  ") == ["Hello there."]
    assert split("   ") == []


def test_a_long_reply_is_cut_at_paragraphs_first() -> None:
    first, second = "A" * 3000, "B" * 3000
    assert split(f"{first}\n\n{second}") == [first, second]


def test_a_paragraph_too_long_is_cut_at_sentences() -> None:
    sentence = "This sentence has exactly forty-two chars."
    paragraph = " ".join([sentence] * 200)  # 8,599 characters
    parts = split(paragraph)
    assert len(parts) == 3
    assert all(len(p) <= WHATSAPP_MAX_CHARS and p.endswith(".") for p in parts)
    assert " ".join(parts) == paragraph


def test_a_word_longer_than_a_part_is_cut_anywhere() -> None:
    assert split("x" * 10, 4) == ["xxxx", "xxxx", "xx"]


def test_split_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        split("hi", 0)


words = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)


@given(
    text=st.lists(
        st.one_of(words, st.sampled_from([" ", "\n", "\n\n", ". ", "! "])), max_size=80
    ).map("".join),
    limit=st.integers(min_value=1, max_value=120),
)
def test_parts_fit_and_keep_every_word_in_order(text: str, limit: int) -> None:
    parts = split(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    # Only whitespace at the cuts may change.
    assert "".join("".join(parts).split()) == "".join(text.split())


def test_the_typing_pause_grows_with_the_part_and_is_capped() -> None:
    assert typing_pause("x" * 100, per_char_s=0.01, cap_s=3) == pytest.approx(1.0)
    assert typing_pause("x" * 10_000, per_char_s=0.01, cap_s=3) == 3
