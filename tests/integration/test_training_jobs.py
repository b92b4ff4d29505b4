"""Real training through the real queue and `clara worker` processes, on the demo model.

The demo model is built once per test run (tiny size, `shared_demo_model` in tests/conftest.py)
into a shared folder and linked into each test's data dir, as `clara demo-model` would have
left it there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from core.training.adapters import (
    MANIFEST,
    AdapterNotFound,
    delete_adapter,
    get_adapter,
    lineage,
    list_adapters,
    merge_adapter,
)
from core.training.jobs import (
    SubmitRefused,
    get_job,
    job_metrics,
    list_jobs,
    submit_job,
)
from tests.api_training import frozen_version, short_spec
from tests.conftest import ROOT, link_demo_model
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

os.environ["CLARA_DEMO_MODEL_SIZE"] = "tiny"
os.environ.setdefault("CLARA_TRAIN_THREADS", "1")


@pytest.fixture
def demo(settings, shared_demo_model) -> Path:
    return link_demo_model(shared_demo_model, settings.data_path)


def run_worker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "worker", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def start_worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", *args],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_submit_refuses_what_is_missing(db_engine, admin, demo):
    version = frozen_version(db_engine, n=10, actor=admin)
    with pytest.raises(SubmitRefused, match="no dataset version 'nope@v3'") as err:
        submit_job(db_engine, admin, short_spec("a", "nope@v3"))
    assert err.value.field == "dataset_version"
    bad_base = short_spec("a", version.id) | {"base_model": str(demo.parent / "missing-model")}
    with pytest.raises(SubmitRefused, match="missing-model does not exist"):
        submit_job(db_engine, admin, bad_base)
    with pytest.raises(SubmitRefused, match="no adapter 'ghost'"):
        submit_job(db_engine, admin, short_spec("a", version.id, "continue") | {"adapter": "ghost"})
    wrong_targets = short_spec("a", version.id)
    wrong_targets["peft"]["target_modules"] = ["c_attn", "c_proj"]
    with pytest.raises(SubmitRefused, match="has none of \\['c_attn', 'c_proj'\\]") as err:
        submit_job(db_engine, admin, wrong_targets)
    assert "q_proj" in str(err.value) and err.value.field == "peft.target_modules"
    assert list_jobs(db_engine, admin) == []  # nothing was queued
    ok = submit_job(db_engine, admin, short_spec("a", f"{version.dataset_name}@v1"))
    assert ok.state == "queued" and ok.dataset_version_id == version.id
    with pytest.raises(SubmitRefused, match="already training an adapter named 'a'"):
        submit_job(db_engine, admin, short_spec("a", version.id))


# The jobs' writes are one code path on both engines (the queue's engine-specific claim is
# tested on both in test_training_queue, the worker's resume on PostgreSQL below): the
# training flows run on SQLite only, to keep the suite short.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lora_then_continue_then_merge(db_engine, admin, demo, settings):
    version = frozen_version(db_engine, actor=admin)
    job = submit_job(db_engine, admin, short_spec("hund", version.id))
    run_worker("--once")
    done = get_job(db_engine, admin, job.id)
    assert done.state == "succeeded", done.error
    metrics = job_metrics(db_engine, admin, job.id)
    train = metrics[metrics["phase"] == "train"]
    assert list(train["step"]) == [2, 4, 6, 8]
    assert train["loss"].iloc[-1] < train["loss"].iloc[0]
    assert train["tokens_per_second"].notna().all() and train["learning_rate"].notna().all()
    adapter = get_adapter(db_engine, admin, "hund")
    m = adapter.metrics
    assert m["eval_perplexity_after"] < m["eval_perplexity_before"]
    assert set(adapter.library_versions) >= {"torch", "transformers", "peft", "trl", "bitsandbytes"}
    assert adapter.dataset_manifest_sha256 == version.manifest_sha256
    assert adapter.job_id == job.id and done.adapter_id == adapter.id
    assert (adapter.path / "adapter_config.json").exists() and (adapter.path / MANIFEST).exists()
    assert adapter.path.parent == settings.data_path / "adapters"

    version2 = frozen_version(db_engine, "faq2", n=24, offset=100, actor=admin)
    job2 = submit_job(
        db_engine,
        admin,
        short_spec("hund-v2", version2.id, "continue", max_steps=4) | {"adapter": "hund"},
    )
    run_worker("--once")
    assert get_job(db_engine, admin, job2.id).state == "succeeded"
    child = get_adapter(db_engine, admin, "hund-v2")
    assert child.parent_adapter_id == adapter.id
    assert child.base_model_fingerprint == adapter.base_model_fingerprint
    chain = lineage(db_engine, admin, "hund-v2")["chain"]
    assert [c["adapter"]["name"] for c in chain] == ["hund-v2", "hund"]
    assert chain[0]["dataset_version"]["ref"] == "faq2@v1"
    assert chain[1]["job"]["id"] == job.id

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_adapter(db_engine, admin, "hund", settings.data_path / "export" / "hund")
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (
        model.generate(
            **tok("Für 3 Hunde", return_tensors="pt"), max_new_tokens=3, do_sample=False
        ).shape[1]
        > 0
    )

    removed = delete_adapter(db_engine, admin, "hund-v2")
    assert not removed.path.exists()
    with pytest.raises(AdapterNotFound):
        get_adapter(db_engine, admin, "hund-v2")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_qlora_4bit_job(db_engine, admin, demo):
    version = frozen_version(db_engine, actor=admin)
    job = submit_job(db_engine, admin, short_spec("hund-q", version.id, "qlora"))
    run_worker("--once")
    done = get_job(db_engine, admin, job.id)
    assert done.state == "succeeded", done.error
    adapter = get_adapter(db_engine, admin, "hund-q")
    assert adapter.method == "qlora"
    assert adapter.spec["quantization"]["quant_type"] == "nf4"
    assert adapter.metrics["eval_perplexity_after"] < adapter.metrics["eval_perplexity_before"]
    log = Path(done.log_path).read_text()
    assert "4-bit nf4" in log


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_failing_job_keeps_log_and_registers_nothing(db_engine, admin, demo, settings):
    version = frozen_version(db_engine, n=10, actor=admin)
    job = submit_job(db_engine, admin, short_spec("broken", version.id))
    # The frozen files change on disk after submit: the job must fail, clearly.
    train = version.path / "train.parquet"
    train.chmod(0o644)
    train.write_bytes(train.read_bytes() + b"x")
    run_worker("--once")
    failed = get_job(db_engine, admin, job.id)
    assert failed.state == "failed"
    assert "does not match its manifest" in failed.error
    assert "does not match its manifest" in Path(failed.log_path).read_text()
    assert list_adapters(db_engine, admin) == []
    assert not (settings.data_path / "adapters" / "broken").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_worker_killed_mid_job_resumes_from_checkpoint(db_engine, admin, demo):
    version = frozen_version(db_engine, actor=admin)
    job = submit_job(db_engine, admin, short_spec("survivor", version.id, max_steps=16))
    worker = start_worker("--lease-seconds", "4")
    try:
        running = wait_until(
            lambda: (j := get_job(db_engine, admin, job.id)).checkpoint and j.step >= 4 and j,
            "the first checkpoint",
        )
        child = psutil.Process(running.pid)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    # The orphaned training process dies with its worker, before anyone can take the job.
    child.wait(timeout=30)
    orphaned = get_job(db_engine, admin, job.id)
    assert orphaned.state == "running"  # until its lease expires
    # `--once` exits when nothing is claimable, so start it only after the lease ran out.
    left = (orphaned.lease_expires_at - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, left) + 1.0)
    run_worker("--once", "--lease-seconds", "4")
    done = get_job(db_engine, admin, job.id)
    assert done.state == "succeeded", done.error
    assert done.attempts == 2 and done.fencing_token == 2
    metrics = job_metrics(db_engine, admin, job.id)
    second = metrics[(metrics["attempt"] == 2) & (metrics["phase"] == "train")]
    assert second["step"].min() > 4  # continued, not restarted
    assert "resuming from" in Path(done.log_path).read_text()
    assert get_adapter(db_engine, admin, "survivor").job_id == job.id
