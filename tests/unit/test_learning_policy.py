"""A line's learning policy as text and the gate's decision (pure functions)."""

from __future__ import annotations

import math

import pytest

from core.learning.gate import decide
from core.learning.policy import POLICY_TEMPLATE, parse_policy_text
from core.training.spec import SpecError


def test_the_editor_template_is_a_valid_policy_and_round_trips():
    policy = parse_policy_text(POLICY_TEMPLATE)
    assert policy.regression == "NAME@v1" and policy.gate.max_regression == 0.02
    assert policy.trainer == {"num_train_epochs": 1, "learning_rate": 0.0001}
    assert parse_policy_text(policy.to_yaml()) == policy


def test_bad_policy_text_is_named_with_its_place():
    with pytest.raises(SpecError, match=r"^p.yaml:2: not valid YAML"):
        parse_policy_text("regression: a@v1\nsources: x: y\n", "p.yaml")
    with pytest.raises(SpecError, match="a policy is a mapping"):
        parse_policy_text("- a\n- b\n", "p.yaml")
    with pytest.raises(SpecError, match=r"^p.yaml:2: min_new_sample: .*'min_new_samples'"):
        parse_policy_text("regression: a@v1\nmin_new_sample: 3\n", "p.yaml")
    with pytest.raises(SpecError, match=r"^p.yaml:3: gate.max_regresion: .*'max_regression'"):
        parse_policy_text("regression: a@v1\ngate:\n  max_regresion: 0.1\n", "p.yaml")
    with pytest.raises(SpecError, match=r"^p.yaml: regression: Field required"):
        parse_policy_text("sources: []\n", "p.yaml")


def figures(reg_before, reg_after, new_before, new_after):
    return {
        "regression_before": reg_before,
        "regression_after": reg_after,
        "new_data_before": new_before,
        "new_data_after": new_after,
    }


def test_the_gate_passes_only_no_worse_on_regression_and_better_on_new_data():
    passed, reason = decide(figures(10.0, 10.1, 20.0, 15.0), 0.02, True)
    assert passed and reason.startswith("passed: regression perplexity 10.000 → 10.100 (+1.0%")
    passed, reason = decide(figures(10.0, 10.3, 20.0, 15.0), 0.02, True)
    assert not passed and reason.startswith("worse on the regression set")
    passed, reason = decide(figures(10.0, 9.0, 20.0, 20.0), 0.02, True)
    assert not passed and reason.startswith("no better on the new data")
    assert decide(figures(10.0, 9.0, 20.0, 20.0), 0.02, False)[0]
    passed, reason = decide(figures(10.0, math.nan, 20.0, 15.0), 0.02, True)
    assert not passed and reason.startswith("a perplexity could not be measured")


def test_the_example_policy_is_valid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "learning-policy.yaml"
    policy = parse_policy_text(path.read_text(encoding="utf-8"), str(path))
    assert policy.regression == "faq@v1" and policy.method == "continue"
    assert policy.interval_hours == 24 and policy.probes
