"""Pure parts of chat serving: generation settings, notes, URLs, literal chat text."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt
from pydantic import ValidationError

from core.config import load_settings
from core.serving.answers import sample_turns
from core.serving.engine import GenerationSettings, PreparedPrompt
from core.serving.feedback import feedback_dataset_name
from core.serving.iframe import chat_base_url
from core.serving.render import answer_markdown, literal_markdown

HOSTILE = [
    "![pixel](http://127.0.0.1:9/pixel.png)",
    "![ref][r]\n\n[r]: http://127.0.0.1:9/ref.png",
    '<img src="http://127.0.0.1:9/raw.png">',
    "<b>bold</b> &amp; <script>alert(1)</script>",
    "`code <img src=x>` and ```\nfenced ![a](http://x/y.png)\n```",
    "    indented ![a](http://x/y.png) <i>x</i>",
    "$$\\href{http://x}{y}$$ *emph* _u_ [link](http://x) <http://x/auto>",
    "\\![escaped](http://x/y.png) back\\slash",
]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("max_new_tokens", 0),
        ("repetition_penalty", 0.5),
        ("stop", ["a", "b", "c", "d", "e"]),  # OpenAI's limit: four
        ("stop", ["a", ""]),
    ],
)
def test_generation_settings_refuse_out_of_range_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        GenerationSettings(**{field: value})


def test_truncation_note_says_what_was_cut() -> None:
    assert PreparedPrompt(None, [], 0, 0, 256).note == ""
    note = PreparedPrompt(None, [], 4, 0, 256).note
    assert "4 earliest message(s) were left out" in note and "256 tokens" in note
    assert "cut by 30 tokens" in PreparedPrompt(None, [], 0, 30, 512).note


def test_chat_url_for_the_browser() -> None:
    assert chat_base_url(load_settings(chat_port=7999)) == "http://127.0.0.1:7999"
    secret = "Vq3xT9pLm2Rk7Yw4Zs8Nd1Hc6Jf5Gb0A"  # a wildcard bind needs an explicit secret
    assert (
        chat_base_url(load_settings(chat_host="0.0.0.0", chat_port=80, auth_secret=secret))
        == "http://127.0.0.1:80"
    )
    assert chat_base_url(load_settings(chat_public_url="https://chat.example.org/")) == (
        "https://chat.example.org"
    )
    assert feedback_dataset_name("a b") == "feedback-a-b"


@pytest.mark.parametrize("text", HOSTILE)
def test_chat_text_renders_as_the_very_characters_typed(text: str) -> None:
    """No image, link, HTML tag, code or emphasis survives: CommonMark turns the escaped
    text back into exactly the input, as text (issue 10, item 7)."""
    md = MarkdownIt("commonmark", {"breaks": True})
    tokens = md.parseInline(literal_markdown(text).replace("\n", " "))
    kinds = {t.type for tok in tokens for t in (tok.children or [])}
    assert kinds <= {"text", "softbreak", "hardbreak"}, kinds
    rendered = md.render(literal_markdown(text))
    assert "<img" not in rendered and "<a " not in rendered and "<code" not in rendered
    assert "<script" not in rendered and "<b>" not in rendered
    plain = "".join(
        t.content
        for tok in md.parse(literal_markdown(text))
        for t in (tok.children or [])
        if t.type == "text"
    )
    assert plain.replace("\u00a0", " ") == text.replace("\n", "")


def test_answers_are_labelled_with_their_model() -> None:
    shown = answer_markdown("PINEAPPLE!", "code-word", "2 earlier message(s) left out")
    html_out = MarkdownIt("commonmark").render(shown)
    assert html_out.startswith("<p><strong>code-word</strong>")
    assert "2 earlier message(s) left out" in html_out and "PINEAPPLE!" in html_out


def test_a_sample_of_one_model_keeps_the_users_words_but_not_other_answers() -> None:
    turns = sample_turns(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "other", "adapter": "base"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "mine", "adapter": "a"},
            {"role": "user", "content": "q3"},
            {"role": "assistant", "content": "unknown", "adapter": None},
            {"role": "user", "content": "q4"},
        ],
        "a",
    )
    assert turns.system == "S" and turns.omitted_answers == 2
    assert turns.messages == [
        {"role": "user", "content": "q1\n\nq2"},
        {"role": "assistant", "content": "mine"},
        {"role": "user", "content": "q3\n\nq4"},
    ]
