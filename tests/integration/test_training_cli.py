"""`clara train` / `clara adapters` / `clara worker` as a user runs them (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from core.datasets.service import SampleIn, add_samples, create_dataset
from core.datasets.versions import freeze
from core.training.jobs import get_job
from tests.conftest import ROOT
from workers.trainer import process_start_time, signal_process_group


def clara(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**os.environ, "CLARA_CLI_USER": "admin"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # a dozen `clara` processes
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_submit_list_show_cancel_retry_from_the_cli(db_engine, admin, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: cli-a\ndataset_version: 1\ntrainer:\n  learnig_rate: 0.1\n")
    r = clara("train", "submit", str(bad))
    assert r.returncode == 1
    assert (
        f"{bad}:4: trainer.learnig_rate: unknown key 'learnig_rate'; did you mean "
        "'learning_rate'?" in " ".join(r.stderr.split())
    )

    missing = tmp_path / "missing.yaml"
    missing.write_text("name: cli-a\ndataset_version: faq@v9\n")
    r = clara("train", "submit", str(missing))
    assert r.returncode == 1 and "no dataset version 'faq@v9'" in r.stderr

    ds = create_dataset(db_engine, admin, "faq")
    add_samples(
        db_engine,
        admin,
        ds.id,
        [SampleIn(kind="text", text=f"Satz {i}.", status="accepted") for i in range(5)],
    )
    freeze(db_engine, admin, ds.id)
    good = tmp_path / "good.yaml"
    r = clara("train", "presets", "demo-lora")
    assert r.returncode == 0
    good.write_text(r.stdout.replace("my-adapter", "cli-a").replace("DATASET@v1", "faq@v1"))
    r = clara("train", "submit", str(good), "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]

    listed = json.loads(clara("train", "list", "--json").stdout)
    assert [(j["id"], j["state"], j["name"]) for j in listed] == [(job_id, "queued", "cli-a")]
    shown = json.loads(clara("train", "show", str(job_id), "--json").stdout)
    assert shown["job"]["dataset_version_id"] and shown["progress"] == 0.0
    assert clara("train", "cancel", str(job_id)).returncode == 0
    assert get_job(db_engine, admin, job_id).state == "cancelled"
    assert clara("train", "retry", str(job_id)).returncode == 0
    assert get_job(db_engine, admin, job_id).state == "queued"
    r = clara("train", "show", "999")
    assert r.returncode == 1 and "no training job 999" in r.stderr
    assert json.loads(clara("adapters", "list", "--json").stdout) == []
    r = clara("adapters", "show", "nope")
    assert r.returncode == 1 and "no adapter 'nope'" in r.stderr


def test_signals_only_reach_the_process_that_was_started():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = process_start_time(proc.pid)
        # Same pid, other start time: as if the pid had been reused by another process.
        assert not signal_process_group(proc.pid, started + 5.0, signal.SIGKILL)
        assert psutil.pid_exists(proc.pid) and proc.poll() is None
        assert signal_process_group(proc.pid, started, signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert not signal_process_group(proc.pid, started, signal.SIGTERM)  # gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cancel_of_an_unresponsive_job_escalates_to_sigkill(db_engine, admin, settings):
    """A job process that ignores SIGTERM is killed after the grace period, and the job ends
    cancelled."""
    from core.training.jobs import cancel_job, submit_sleep_job
    from core.training.queue import claim_next_job
    from workers.trainer import Slot, Worker

    job = submit_sleep_job(db_engine, admin, 60)
    w = Worker(settings, engine=db_engine, grace_seconds=0.5, lease_seconds=30, log=lambda m: None)
    claimed = claim_next_job(db_engine, w.worker_id, 30)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "print('ready', flush=True); time.sleep(60)",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        w.slots = [Slot(claimed, proc, process_start_time(proc.pid), settings.data_path / "x.log")]
        cancel_job(db_engine, admin, job.id)
        w.tick(claim=False)
        assert w.slots[0].stop_reason == "cancel"
        time.sleep(0.3)
        assert proc.poll() is None  # SIGTERM ignored
        deadline = time.monotonic() + 30
        while w.slots and time.monotonic() < deadline:
            w.tick(claim=False)
            time.sleep(0.1)
        assert proc.returncode == -signal.SIGKILL
        assert get_job(db_engine, admin, job.id).state == "cancelled"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
