"""Sample templates: placeholders are checked up front and rendered per document part."""

import datetime as dt
from types import SimpleNamespace

import pytest

from core.datasets.builder import BUILTIN_TEMPLATES, SampleTemplate, _values, get_template
from core.datasets.errors import TemplateError

DOC = SimpleNamespace(
    doc_id="hundesteuersatzung",
    revision=2,
    title="Hundesteuersatzung",
    text="§ 1 Steuer",
    document_type="satzung",
    domain="steuern",
    date=dt.date(2023, 1, 1),
    source_path="x.md",
    metadata={"author": "Stadt"},
)


def test_builtin_chat_template_renders():
    s = get_template("was-regelt").render(_values(DOC, "§ 1 Steuer", 1, 1))
    assert [m.content for m in s.messages] == ["Was regelt Hundesteuersatzung?", "§ 1 Steuer"]


def test_all_placeholders_and_metadata():
    tpl = SampleTemplate(
        kind="text",
        text="{title} ({document_type}, {domain}, {date}, "
        "Teil {part}/{parts}, von {metadata[author]}): {text}",
    )
    s = tpl.render(_values(DOC, "Absatz", 2, 3))
    assert (
        s.text == "Hundesteuersatzung (satzung, steuern, 2023-01-01, Teil 2/3, von Stadt): Absatz"
    )


def test_bad_templates_are_refused_with_the_reason():
    with pytest.raises(TemplateError, match=r"unknown placeholder \{titel\}.*\{title\}"):
        SampleTemplate(user="Was regelt {titel}?")
    with pytest.raises(TemplateError, match="literal braces"):
        SampleTemplate(kind="text", text="{title")
    with pytest.raises(TemplateError, match="needs user and assistant"):
        SampleTemplate(user=" ", assistant="{text}")
    with pytest.raises(TemplateError, match="no template named 'nope'"):
        get_template("nope")
    missing = SampleTemplate(kind="text", text="{metadata[isbn]}")
    with pytest.raises(TemplateError, match="isbn"):
        missing.render(_values(DOC, "x", 1, 1))


def test_builtins_are_valid():
    assert {"text", "was-regelt"} <= set(BUILTIN_TEMPLATES)
