"""A spec as it arrives over HTTP (`SpecText`): YAML or JSON text or bytes, each refusal with
the field, the line and, for a misspelt key, the suggested name."""

from __future__ import annotations

import json

import pytest

from core.training.spec import SpecError, SpecText, parse_spec_json


def _refused(text, fmt="yaml") -> SpecError:
    with pytest.raises(SpecError) as err:
        SpecText(text, fmt, source="spec").parse()
    return err.value


def test_a_misspelt_key_is_named_with_its_line_and_the_suggestion():
    err = _refused("name: a\ndataset_version: 1\ntrainer:\n  learnig_rate: 0.1\n")
    assert (err.field, err.line, err.suggestion) == ("trainer.learnig_rate", 4, "learning_rate")
    assert err.errors == [
        {
            "field": "trainer.learnig_rate",
            "message": "unknown key 'learnig_rate'; did you mean 'learning_rate'?",
            "line": 4,
            "suggestion": "learning_rate",
        }
    ]
    assert str(err).startswith("spec:4: trainer.learnig_rate: unknown key")
    top = _refused(json.dumps({"name": "a", "dataset_versoin": 1}, indent=1), "json")
    assert (top.field, top.line, top.suggestion) == ("dataset_versoin", 3, "dataset_version")
    # Nothing close: no suggestion, and the error says so by leaving it out.
    far = _refused("name: a\ndataset_version: 1\nzzzzzz: 1\n")
    assert far.suggestion is None and "suggestion" not in far.errors[0]


def test_json_and_yaml_give_the_same_spec():
    yaml_text = "name: a\ndataset_version: faq@v1\ntrainer:\n  max_steps: 5\n"
    data = {"name": "a", "dataset_version": "faq@v1", "trainer": {"max_steps": 5}}
    assert SpecText(yaml_text.encode()).parse() == SpecText(json.dumps(data), "json").parse()


@pytest.mark.parametrize(
    ("text", "fmt", "expected", "line"),
    [
        ('{"name": "a",\n "trainer": }', "json", "not valid JSON", 2),
        ("[1, 2]", "json", "a spec is a JSON object", 1),
        ("name: a\n  bad: [", "yaml", "not valid YAML", 2),
        (b"name: \xff", "yaml", "not UTF-8 text (byte 6 is 0xff)", None),
    ],
)
def test_unreadable_text_names_the_problem(text, fmt, expected, line):
    err = _refused(text, fmt)
    assert expected in str(err) and err.line == line


def test_parse_spec_json_without_a_source():
    err = pytest.raises(SpecError, parse_spec_json, '{"name": "A", "dataset_version": 1}')
    assert err.value.field == "name" and err.value.line == 1
