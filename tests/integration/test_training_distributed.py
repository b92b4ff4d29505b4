"""One training job over several processes (issue 14, item 6): a real `clara worker`, torchrun
with two ranks over gloo on the CPU (as it would be two GPUs over NCCL), the tiny demo model.

What must hold: both ranks train one job (DDP), only rank 0 writes about it (one metric row
per logged step, one adapter), a cancel stops both ranks at the same step with one
checkpoint that holds every rank's state, Retry resumes the two ranks from it, and nothing
of the job is left running afterwards.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from core.training.checkpoints import checkpoint_step
from core.training.jobs import cancel_job, get_job, job_metrics, retry_job, submit_job
from tests.api_training import frozen_version, running_worker, short_spec
from tests.conftest import link_demo_model
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def job_processes(settings, job_id: int) -> list[int]:
    """This test's processes still running `core.training.child JOB_ID …` (the job process,
    its torchrun, its ranks): found by their data dir, as other tests run jobs too."""
    mine = f"CLARA_DATA_DIR={settings.data_path}".encode()
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"core.training.child" in args and str(job_id).encode() in args and mine in env:
            out.append(int(proc.name))
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_two_ranks_train_one_job_cancel_at_one_step_and_resume(
    db_engine, admin, settings, shared_demo_model, monkeypatch
):
    monkeypatch.setenv("CLARA_DEMO_MODEL_SIZE", "tiny")
    monkeypatch.setenv("CLARA_TRAIN_THREADS", "2")
    link_demo_model(shared_demo_model, settings.data_path)
    version = frozen_version(db_engine, n=64, actor=admin)
    spec = short_spec(
        "two-ranks",
        version.id,
        max_steps=14,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=6,
        logging_steps=1,
        save_steps=100,  # the only checkpoint is the cancel's
    )
    spec["resources"] = {"processes": 2}
    job = submit_job(db_engine, admin, spec)

    with running_worker(settings):
        wait_until(lambda: get_job(db_engine, admin, job.id).step >= 3, "training past step 3")
        cancel_job(db_engine, admin, job.id)
        cancelled = wait_until(
            lambda: (j := get_job(db_engine, admin, job.id)).state == "cancelled" and j,
            "the cancel",
            limit=180,
        )
        saved = Path(cancelled.checkpoint)
        at = checkpoint_step(str(saved))
        assert cancelled.error == f"cancelled at step {at}, checkpoint saved", cancelled.error
        # One checkpoint, written at one step by both ranks: each rank's RNG state is in it.
        assert sorted(p.name for p in saved.glob("rng_state_*.pth")) == [
            "rng_state_0.pth",
            "rng_state_1.pth",
        ]
        assert [p.name for p in saved.parent.glob("checkpoint-*")] == [saved.name]
        wait_until(
            lambda: not job_processes(settings, job.id), "the job's processes to end", limit=30
        )

        retry_job(db_engine, admin, job.id)
        done = wait_until(
            lambda: (j := get_job(db_engine, admin, job.id)).state in ("succeeded", "failed") and j,
            "the retried job",
            limit=300,
        )
    log = Path(done.log_path).read_text()
    assert done.state == "succeeded", done.error or log[-3000:]
    assert "launching 2 training process(es) on this machine" in log
    assert "rank 1 of 2" in log
    assert f"resuming from {saved}" in log

    # Rank 0 alone wrote: one row per logged step and attempt, one adapter.
    metrics = job_metrics(db_engine, admin, job.id)
    train_rows = metrics[metrics["phase"] == "train"]
    per_step = Counter(zip(train_rows["attempt"], train_rows["step"], strict=True))
    assert per_step and set(per_step.values()) == {1}, per_step
    assert train_rows["step"].max() == 14
    adapter_dir = Path(done.output_dir) / "adapter"
    assert (adapter_dir / "adapter_model.safetensors").exists()
    from core.training.adapters import list_adapters

    adapters = [a for a in list_adapters(db_engine, admin) if a.name == "two-ranks"]
    assert len(adapters) == 1 and adapters[0].metrics["world_size"] == 2
    assert not job_processes(settings, job.id)
    assert os.environ.get("RANK") is None  # nothing of torchrun leaked into this process


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_job_over_two_machines_waits_for_the_second_and_trains_with_it(
    db_engine, admin, settings, shared_demo_model, monkeypatch
):
    """Two workers stand for two machines (one rank each); PostgreSQL coordinates them. With
    only one worker a job fails once its join timeout is over, naming what is missing; with
    a second worker running, the second joins and both train it."""
    from sqlalchemy import select

    from core.db import reading
    from core.ops.heartbeats import list_processes
    from core.training.models import JobNode

    monkeypatch.setenv("CLARA_WORKER_ADDRESS", "127.0.0.1")
    link_demo_model(shared_demo_model, settings.data_path)
    version = frozen_version(db_engine, n=32, actor=admin)

    def submit(name: str, join_timeout_s: int):
        spec = short_spec(name, version.id, max_steps=4, save_steps=100)
        spec["resources"] = {"nodes": 2, "join_timeout_s": join_timeout_s}
        return submit_job(db_engine, admin, spec)

    def finished(job):
        return wait_until(
            lambda: (j := get_job(db_engine, admin, job.id)).state in ("succeeded", "failed") and j,
            "the job to end",
            limit=300,
        )

    def live_workers() -> int:
        return sum(p.kind == "worker" and not p.stale for p in list_processes(db_engine, 60))

    with running_worker(settings):
        alone = finished(submit("alone", 10))
        assert alone.state == "failed"
        assert alone.error.startswith("only 1 of 2 machines joined within 10 s"), alone.error
        with running_worker(settings):
            # A machine joins once its worker runs; a loaded CI box takes seconds to start one.
            wait_until(lambda: live_workers() == 2, "the second worker")
            job = submit("two-machines", 120)
            done = finished(job)
    log = Path(done.log_path).read_text()
    assert done.state == "succeeded", done.error or log[-3000:]
    assert "node 1 of 2" in log and "rank 1 of 2" in log

    with reading(db_engine) as s:
        last = s.execute(
            select(JobNode.node_rank, JobNode.worker_id, JobNode.address, JobNode.port)
            .where(JobNode.job_id == job.id, JobNode.token == done.fencing_token)
            .order_by(JobNode.node_rank)
        ).all()
    assert [n.node_rank for n in last] == [0, 1]
    assert last[0].worker_id != last[1].worker_id
    assert last[0].address == "127.0.0.1" and last[0].port
    assert (Path(done.output_dir) / "adapter" / "adapter_model.safetensors").exists()
    assert not job_processes(settings, job.id)


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_a_job_needing_more_gpus_than_any_worker_has_waits_and_says_why(
    db_engine, admin, settings, shared_demo_model
):
    from core.ops.health import health_report
    from core.training.jobs import job_summary, waiting_reason
    from core.training.queue import claim_next_job
    from workers.trainer import Worker

    link_demo_model(shared_demo_model, settings.data_path)
    version = frozen_version(db_engine, n=16, actor=admin)
    spec = short_spec("two-gpus", version.id)
    spec["resources"] = {"gpus": 2}
    job = submit_job(db_engine, admin, spec)
    assert job.gpus == 2

    # A real worker without GPUs (as this machine is): it does not take the job.
    worker = Worker(settings, engine=db_engine, gpus=0, log=lambda _m: None)
    worker.presence.start()
    try:
        assert worker.tick() is False and not worker.slots
        queued = get_job(db_engine, admin, job.id)
        assert queued.state == "queued"
        why = waiting_reason(db_engine, admin, queued, settings)
        assert why == (
            "waits for a worker with 2 GPU(s): the live workers have at most 0 "
            "(start `clara worker --gpus 2` on a machine with them)"
        )
        assert job_summary(db_engine, admin, job.id).waiting == why  # also the API's show
        report = health_report(db_engine, admin, settings, local_gpus=False)
        assert any(c.status == "warn" and why in c.detail for c in report.checks), report.checks
    finally:
        worker.presence.stop()
    assert waiting_reason(db_engine, admin, queued, settings).startswith(
        "waits for a worker: none is running"
    )
    # A worker with one GPU does not take it either; one with two does.
    assert claim_next_job(db_engine, "one-gpu", 10, kinds=("sft",), gpus=1) is None
    claimed = claim_next_job(db_engine, "two-gpus", 10, kinds=("sft",), gpus=2)
    assert claimed is not None and claimed.id == job.id
