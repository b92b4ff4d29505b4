"""The Training page under Streamlit's AppTest: form errors at the fields, YAML mode, the
job view and the adapter registry with comparison and lineage (real database, real files)."""

from __future__ import annotations

import pytest

from core.datasets.service import SampleIn, add_samples, create_dataset
from core.datasets.versions import freeze
from core.training.adapters import register_adapter
from core.training.jobs import submit_sleep_job
from tests.conftest import open_page

pytestmark = pytest.mark.slow


@pytest.fixture
def app(db_engine, settings, monkeypatch):
    return open_page(monkeypatch, "pages/training.py", timeout=180)


def _peft_folder(tmp_path):
    """A real (untrained) PEFT LoRA adapter on a tiny Llama, as files on disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    out = tmp_path / "adapter-files"
    peft_model.save_pretrained(out)
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_form_errors_yaml_mode_jobs_and_registry(app, db_engine, admin, tmp_path):
    at = app
    at.text_input(key="training_f_name").input("Bad Name")
    [b for b in at.button if b.label == "Submit job"][0].click()
    at.run()
    errors = [e.value for e in at.error]
    assert any(e.startswith("must be 1-64 characters") for e in errors)  # at the field
    assert any(e.startswith("name: must be") for e in errors)  # and on top
    # Unusable extra settings show at their box alone (the rest is not checked yet).
    at.text_area(key="training_f_extra").input("trainer: [unclosed")
    [b for b in at.button if b.label == "Submit job"][0].click()
    at.run()
    errors = [e.value for e in at.error]
    assert [e for e in errors if e.startswith("not valid YAML")] and len(errors) == 1

    at.radio(key="training_mode").set_value("YAML")
    at.run()
    text = at.text_area(key="training_yaml").value
    assert "trainer:" in text and "learning_rate" in text
    at.text_area(key="training_yaml").input(
        text.replace("learning_rate", "learnig_rate").replace("name: my-adapter", "name: ok")
    )
    at.button(key="training_submit_yaml").click()
    at.run()
    assert any("did you mean 'learning_rate'" in e.value for e in at.error)

    ds = create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, ds.id, [SampleIn(kind="text", text="Satz.", status="accepted")])
    version = freeze(db_engine, admin, ds.id, eval_ratio=0.0)
    job = submit_sleep_job(db_engine, admin, 1.0, name="sleepy")
    files = _peft_folder(tmp_path)
    for name, after in (("alpha", 40.0), ("beta", 30.0)):
        register_adapter(
            db_engine,
            admin,
            name=name,
            files_dir=files,
            base_model="demo",
            base_model_fingerprint="f" * 64,
            method="lora",
            dataset_version_id=version.id,
            dataset_manifest_sha256=version.manifest_sha256,
            metrics={"eval_perplexity_before": 50.0, "eval_perplexity_after": after},
        )
    # Only the open tab's content runs (stateful tabs): open each in turn.
    at.session_state["training_tab"] = "Jobs"
    at.run()
    assert not at.exception, at.exception
    markdown = " ".join(m.value for m in at.markdown)
    assert f"Job {job.id}: `sleepy` — **queued**" in markdown
    at.session_state["training_tab"] = "Adapters"
    at.run()
    assert not at.exception, at.exception
    markdown = " ".join(m.value for m in at.markdown)
    assert "dataset version **faq@v1**" in markdown and "adapter **beta**" in markdown
    frames = [d.value for d in at.dataframe]
    compare = next(f for f in frames if list(f.columns) == ["beta", "alpha"])
    assert compare.loc["eval_perplexity_after"].tolist() == [30.0, 40.0]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lines_tab_creates_activates_and_rolls_back(app, db_engine, admin, tmp_path):
    from core.learning.lines import get_line

    files = _peft_folder(tmp_path)
    for name in ("alpha", "beta"):
        register_adapter(
            db_engine,
            admin,
            name=name,
            files_dir=files,
            base_model="demo",
            base_model_fingerprint="f" * 64,
            method="lora",
        )
    at = app
    at.session_state["training_tab"] = "Lines"
    at.run()
    assert not at.exception, at.exception
    assert any("No adapter lines yet" in c.value for c in at.caption)
    at.text_input(key="training_line_name").input("faq")
    at.selectbox(key="training_line_first").set_value("alpha")
    next(b for b in at.button if b.label == "Create line").click()
    at.run()
    assert [s.value for s in at.success] == ["Created line faq: chat serves it as line:faq."]
    assert "**line:faq** serves **alpha** now." in " ".join(m.value for m in at.markdown)

    at.text_input(key="training_line_reason").input("better answers")
    at.selectbox(key="training_line_new").set_value("beta")
    at.button(key="training_line_activate").click()
    at.run()
    assert [s.value for s in at.success] == ["Line faq serves beta now."]
    at.selectbox(key="training_line_back").set_value("alpha")
    at.button(key="training_line_rollback").click()
    at.run()
    assert [s.value for s in at.success] == ["Line faq serves alpha again."]
    history = get_line(db_engine, admin, "faq").history
    assert [(h.action, h.adapter_name, h.reason) for h in history] == [
        ("rollback", "alpha", "better answers"),
        ("activate", "beta", "better answers"),
        ("create", "alpha", "line created"),
    ]
    frames = [d.value for d in at.dataframe]
    shown = next(f for f in frames if "action" in f.columns)
    assert shown["action"].tolist() == ["rollback", "activate", "create"]
    # The policy editor: a typo is named with its line; a valid policy is saved.
    ds = create_dataset(db_engine, admin, "regression")
    add_samples(db_engine, admin, ds.id, [SampleIn(kind="text", text="Satz.", status="accepted")])
    freeze(db_engine, admin, ds.id, eval_ratio=0.0)
    at.text_area(key="training_policy_faq").input("regression: regression@v1\nmin_new_sample: 3\n")
    at.button(key="training_policy_save").click()
    at.run()
    assert any(e.value.startswith("the policy:2: min_new_sample: unknown key") for e in at.error), [
        e.value for e in at.error
    ]
    at.text_area(key="training_policy_faq").input("regression: regression@v1\nmin_new_samples: 3\n")
    at.button(key="training_policy_save").click()
    at.run()
    assert [s.value for s in at.success] == ["Policy of line faq saved."]
    assert any("a cycle starts at 3" in m.value for m in at.markdown)
    assert any("No learning cycles yet" in c.value for c in at.caption)
