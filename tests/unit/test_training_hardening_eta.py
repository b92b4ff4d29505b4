"""Expected times (issue 10, item 18): the preset said "a minute on a CPU" and took 11. The
ETA comes from the job's own pace in its current attempt, and preset texts promise no time
that was not measured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from core.training.jobs import JobInfo, job_progress
from core.training.spec import PRESETS

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _job(**kw) -> JobInfo:
    base = dict(
        id=1, kind="sft", name="x", owner="admin", method="lora", spec={}, base_model="demo",
        dataset_version_id=1, state="running", priority=0, attempts=1, max_attempts=3,
        fencing_token=2, lease_owner="w", lease_expires_at=None, heartbeat_at=None,
        cancel_requested=False, pid=None, worker_host=None, step=30, max_steps=60,
        checkpoint=None, log_path=None, output_dir=None, error=None, adapter_id=None,
        created_at=T0, started_at=None, finished_at=None,
    )  # fmt: skip
    return JobInfo.model_validate(base | kw)


def _rows(steps_and_times) -> pd.DataFrame:
    return pd.DataFrame(
        [{"phase": "train", "step": s, "attempt": 1, "at": t} for s, t in steps_and_times]
    )


def test_eta_from_the_current_attempt_only():
    # First attempt: steps 5..20 at 10 s a step; cancelled; retried an hour later, which
    # trains at 2 s a step (steps 25..30).
    first = [(s, T0 + timedelta(seconds=10 * s)) for s in range(5, 21, 5)]
    resumed_at = T0 + timedelta(hours=1)
    second = [(s, resumed_at + timedelta(seconds=2 * (s - 20))) for s in (25, 30)]
    job = _job(step=30, started_at=resumed_at)
    frac, eta = job_progress(job, _rows(first + second))
    assert frac == 0.5
    assert eta is not None and abs(eta - 60.0) < 1e-6  # 30 steps left at 2 s, not ~2 min/step


def test_eta_of_a_single_attempt():
    rows = _rows([(s, T0 + timedelta(seconds=6 * s)) for s in (5, 10, 15)])
    _, eta = job_progress(_job(step=15, started_at=T0), rows)
    assert abs(eta - 45 * 6.0) < 1e-6


def test_preset_texts_promise_no_unmeasured_time():
    for name, data in PRESETS.items():
        text = data.get("description", "")
        assert "a minute" not in text, name
        assert "ETA" in text, name  # the estimate that is shown comes from live progress
    assert "Measured" in PRESETS["demo-lora"]["description"]
