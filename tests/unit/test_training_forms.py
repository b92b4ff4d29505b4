"""core/training/forms.py: the Training page's form rules on plain values."""

from __future__ import annotations

import pytest

from core.permissions import PermissionDenied
from core.training.forms import (
    TOP,
    ExtraSettingsError,
    FormValues,
    field_value,
    form_defaults,
    form_errors,
    spec_data,
    spec_from_form,
)
from core.training.jobs import SubmitRefused, TrainingError
from core.training.spec import PRESETS, SpecError


def _form(**over) -> FormValues:
    d = form_defaults(over.pop("preset", "demo-lora"))
    sections: dict = {}
    for section, keys in d.fields.items():
        for key in keys:
            value = field_value(section, key, d.values[f"{section}.{key}"])
            sections.setdefault(section, {})[key] = value
    base = {"name": "my-adapter", "dataset_version": "faq@v1", "method": d.method}
    return FormValues(**{**base, "sections": sections, **over})


def test_defaults_come_from_the_preset():
    d = form_defaults("demo-qlora")
    assert d.method == "qlora"
    assert d.values["peft.target_modules"] == "q_proj, k_proj, v_proj, o_proj"
    assert d.values["quantization.bits"] == 4 and d.values["trainer.max_steps"] == 40
    assert d.fields["quantization"] == list(PRESETS["demo-qlora"]["quantization"])
    assert d.fields == {
        "peft": list(PRESETS["demo-qlora"]["peft"]),
        "trainer": list(PRESETS["demo-qlora"]["trainer"]),
        "quantization": ["bits", "quant_type", "double_quant", "compute_dtype"],
    }
    assert "name: my-adapter" in d.yaml and "description" not in d.yaml
    assert form_defaults("continue").fields["peft"] == []
    with pytest.raises(SpecError, match="did you mean 'demo-lora'"):
        form_defaults("demo-lor")


def test_field_value_splits_target_modules_only():
    assert field_value("peft", "target_modules", "q_proj, v_proj,") == ["q_proj", "v_proj"]
    assert field_value("peft", "target_modules", "all-linear") == "all-linear"
    assert field_value("trainer", "lr_scheduler_type", "a, b") == "a, b"
    assert field_value("trainer", "max_steps", 60) == 60


def test_spec_data_keeps_what_the_method_uses():
    lora = spec_data(_form(base_model="  ", adapter="old", extra=""))
    assert set(lora) == {"name", "dataset_version", "method", "peft", "trainer"}
    assert "base_model" not in lora and "adapter" not in lora

    # Quantization counts only for qlora: 4 or 8 bits, the section as the form holds it.
    form = _form(preset="demo-qlora", base_model=" /models/x ")
    q = spec_data(form)
    assert q["quantization"] == {
        "bits": 4,
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "bfloat16",
    }
    assert q["base_model"] == "/models/x"
    assert q["peft"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    eight = {**form.sections, "quantization": {**form.sections["quantization"], "bits": 8}}
    assert spec_from_form(_form(preset="demo-qlora", sections=eight)).quantization.bits == 8
    as_lora = spec_data(_form(preset="demo-qlora", method="lora"))
    assert "quantization" not in as_lora

    # continue: the adapter's LoRA settings stay, so no peft even when the form has some.
    cont = spec_data(_form(method="continue", adapter="old"))
    assert cont["adapter"] == "old" and "peft" not in cont


def test_extra_yaml_merges_last_section_by_section():
    data = spec_data(_form(extra="trainer: {weight_decay: 0.01, max_steps: 5}\npriority: 3"))
    assert data["trainer"]["weight_decay"] == 0.01 and data["trainer"]["max_steps"] == 5
    assert data["trainer"]["learning_rate"] == 2e-3 and data["priority"] == 3
    with pytest.raises(ExtraSettingsError) as err:
        spec_data(_form(extra="trainer: [unclosed"))
    assert form_errors(err.value) == {"extra": err.value.errors[0]["message"]}
    assert err.value.errors[0]["message"].startswith("not valid YAML")
    with pytest.raises(ExtraSettingsError, match="must be a YAML mapping"):
        spec_data(_form(extra="- a list"))


def test_spec_from_form_validates_form_and_yaml():
    spec = spec_from_form(_form())
    assert spec.name == "my-adapter" and spec.trainer["max_steps"] == 60
    with pytest.raises(SpecError) as err:
        spec_from_form(_form(name="Bad Name"))
    errors = form_errors(err.value)
    assert errors["name"].startswith("must be 1-64 characters")
    assert errors[TOP].startswith("name: must be")

    text = form_defaults("demo-lora").yaml.replace("learning_rate", "learnig_rate")
    with pytest.raises(SpecError) as err:
        spec_from_form(text)
    assert str(err.value).startswith("spec:")  # the YAML editor's errors name the spec
    assert "did you mean 'learning_rate'" in form_errors(err.value)[TOP]


def test_form_errors_of_refusals():
    refused = SubmitRefused("dataset_version", "no dataset version 'faq@v9'")
    assert form_errors(refused) == {
        "dataset_version": str(refused).split(": ", 1)[-1],
        TOP: str(refused),
    }
    plain = TrainingError("the queue is closed")
    assert form_errors(plain) == {TOP: "the queue is closed"}
    denied = PermissionDenied("eve", "viewer", "training:create")
    assert form_errors(denied) == {TOP: str(denied)}
    with pytest.raises(TypeError):
        form_errors(RuntimeError("boom"))
