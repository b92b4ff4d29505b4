"""Training spec validation: checked against the installed TRL SFTConfig / PEFT LoraConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from peft import LoraConfig
from trl import SFTConfig

from core.training.runner import to_trl_records
from core.training.spec import (
    PRESETS,
    SpecError,
    TrainingSpec,
    load_spec,
    parse_spec,
    preset,
    save_spec,
    spec_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]


def _spec(**kw):
    return spec_from_dict({"name": "a", "dataset_version": 1, **kw})


def test_unknown_keys_name_the_field_and_the_closest_valid_name():
    with pytest.raises(SpecError) as err:
        _spec(trainer={"learnig_rate": 1e-3})
    assert err.value.field == "trainer.learnig_rate"
    assert "did you mean 'learning_rate'" in str(err.value)
    with pytest.raises(SpecError, match="did you mean 'lora_alpha'"):
        _spec(peft={"lora_alpah": 16})
    with pytest.raises(SpecError, match="did you mean 'dataset_version'"):
        spec_from_dict({"name": "a", "dataset_versoin": 1})


def test_every_installed_field_is_accepted():
    """The valid keys come from the installed dataclasses, not from a copied list."""
    sft = {f.name for f in dataclasses.fields(SFTConfig)}
    assert {"packing", "max_length", "completion_only_loss"} <= sft
    spec = _spec(
        trainer={"packing": False, "completion_only_loss": True, "max_length": 32},
        peft={"use_rslora": True, "target_modules": ["q_proj"], "bias": "none"},
    )
    assert spec.trainer["completion_only_loss"] is True
    assert spec.lora_kwargs()["use_rslora"] is True
    LoraConfig(**spec.lora_kwargs())  # what the runner does with it


def test_wrong_types_are_refused_with_the_field():
    with pytest.raises(SpecError) as err:
        _spec(trainer={"learning_rate": "fast"})
    assert err.value.field == "trainer.learning_rate" and "'fast'" in str(err.value)
    with pytest.raises(SpecError, match="peft.r"):
        _spec(peft={"r": "eight"})
    with pytest.raises(SpecError, match="method"):
        _spec(method="full")


def test_method_rules():
    with pytest.raises(SpecError, match="qlora needs quantization") as err:
        _spec(method="qlora")
    assert err.value.field == "quantization"
    q = _spec(method="qlora", quantization={"bits": 4, "quant_type": "fp4"})
    bnb = q.quantization.to_bnb()
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "fp4"
    assert _spec(method="qlora", quantization={"bits": 8}).quantization.to_bnb().load_in_8bit
    with pytest.raises(SpecError, match="quant_type"):
        _spec(method="qlora", quantization={"bits": 4, "quant_type": "int3"})
    with pytest.raises(SpecError, match="only used with method qlora"):
        _spec(quantization={"bits": 4})
    with pytest.raises(SpecError, match="needs the name of the adapter"):
        _spec(method="continue")
    with pytest.raises(SpecError, match="set by the CLARA runner"):
        _spec(trainer={"output_dir": "/tmp/x"})
    with pytest.raises(SpecError, match="a-z, 0-9"):
        spec_from_dict({"name": "Bad Name", "dataset_version": 1})


def test_yaml_errors_carry_file_and_line(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: a\ndataset_version: 1\ntrainer:\n  max_steps: 3\n  max_step: 4\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert err.value.line == 5 and err.value.file == str(p)
    assert str(err.value).startswith(f"{p}:5: trainer.max_step:")
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec("name: [a\n", file="x.yaml")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")


def test_yaml_round_trip_and_presets(tmp_path):
    for name in PRESETS:
        extra = {"adapter": "base"} if PRESETS[name]["method"] == "continue" else {}
        spec = spec_from_dict(preset(name, name="x", dataset_version="faq@v1", **extra))
        path = save_spec(spec, tmp_path / f"{name}.yaml")
        assert load_spec(path) == spec
    merged = preset("demo-lora", name="y", dataset_version=3, trainer={"max_steps": 5})
    assert merged["trainer"]["max_steps"] == 5 and merged["trainer"]["packing"] is True
    with pytest.raises(SpecError, match="did you mean 'demo-lora'"):
        preset("demo-lora2")


def test_example_specs_are_valid():
    files = sorted((ROOT / "examples" / "specs").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        assert isinstance(load_spec(f), TrainingSpec)


class _Tok:
    def apply_chat_template(self, messages, tokenize=False):
        return "|".join(f"{m['role']}:{m['content']}" for m in messages)


def test_rows_become_trl_records():
    chat = {
        "id": "1",
        "kind": "chat",
        "text": None,
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    }
    text = {"id": "2", "kind": "text", "text": "Satzung", "messages": None}
    assert to_trl_records([chat], _Tok()) == [{"messages": chat["messages"]}]
    assert to_trl_records([text], _Tok()) == [{"text": "Satzung"}]
    # Mixed kinds: one format for the dataset, chat rendered with the chat template.
    assert to_trl_records([chat, text], _Tok()) == [
        {"text": "user:Q|assistant:A"},
        {"text": "Satzung"},
    ]


def test_resources_are_checked_with_file_line_and_suggestion():
    base = "name: x\ndataset_version: faq@v1\n"
    spec = parse_spec(base + "resources:\n  processes: 2\n  nodes: 3\n")
    assert spec.resources.world_size == 6 and spec.resources.join_timeout_s == 600
    gpus = parse_spec(base + "resources:\n  gpus: 4\n").resources
    assert (gpus.processes_per_node, gpus.world_size) == (4, 4)
    with pytest.raises(SpecError) as err:
        parse_spec(base + "resources:\n  proceses: 2\n", file="ddp.yaml")
    assert str(err.value) == (
        "ddp.yaml:4: resources.proceses: unknown key 'proceses'; did you mean 'processes'?"
    )
    with pytest.raises(SpecError, match=r"ddp.yaml:4: resources.nodes: .*greater than or equal"):
        parse_spec(base + "resources:\n  nodes: 0\n", file="ddp.yaml")
    with pytest.raises(SpecError, match=r"resources.processes: one training process runs per GPU"):
        parse_spec(base + "resources:\n  gpus: 2\n  processes: 4\n", file="ddp.yaml")
