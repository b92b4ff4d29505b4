"""The Training page follows an action at once (issue 10, item 14), under AppTest: a job
submitted from the form is the job shown (not the one chosen before), and the Jobs tab stays
open across reruns."""

from __future__ import annotations

import pytest

from core.datasets.service import SampleIn, add_samples, create_dataset
from core.datasets.versions import freeze
from core.training.jobs import submit_sleep_job
from tests.conftest import ROOT, open_page

pytestmark = pytest.mark.slow


@pytest.fixture
def app(db_engine, settings, monkeypatch):
    return open_page(monkeypatch, "pages/training.py", timeout=180)


def _headings(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("### Job ")]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_submitted_job_is_the_job_shown(app, db_engine, admin):
    at = app
    ds = create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, ds.id, [SampleIn(kind="text", text="Satz.", status="accepted")])
    freeze(db_engine, admin, ds.id, eval_ratio=0.0)
    first = submit_sleep_job(db_engine, admin, 1.0, name="first")
    at.session_state["training_tab"] = "Jobs"
    at.run()
    assert not at.exception, at.exception
    assert _headings(at) == [f"### Job {first.id}: `first` — **queued**"]

    at.session_state["training_tab"] = "New job"
    at.run()
    at.text_input(key="training_f_name").input("second")
    [b for b in at.button if b.label == "Submit job"][0].click()
    at.run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error]
    # The new job is the one in the box and the one shown, and its tab is open.
    assert _headings(at) == [f"### Job {first.id + 1}: `second` — **queued**"]
    assert at.selectbox(key="training_job_select").value == first.id + 1
    assert at.session_state["training_tab"] == "Jobs"

    # Another job chosen: shown at once, the Jobs tab stays open.
    at.selectbox(key="training_job_select").select(first.id)
    at.run()
    assert at.session_state["training_tab"] == "Jobs"
    assert _headings(at) == [f"### Job {first.id}: `first` — **queued**"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_waiting_for_the_demo_model_shows_the_build(app, db_engine, admin, settings):
    """Issue 10, item 13: while the demo model builds (a real build, `clara demo-model`),
    the job that waits for it shows the build's progress instead of a bare 0 %."""
    import os
    import subprocess
    import sys
    import time

    from core.training.demo_model import demo_build_status
    from core.training.jobs import submit_job
    from core.training.queue import claim_next_job
    from core.training.spec import preset

    at = app
    ds = create_dataset(db_engine, admin, "faq")
    add_samples(db_engine, admin, ds.id, [SampleIn(kind="text", text="Satz.", status="accepted")])
    version = freeze(db_engine, admin, ds.id, eval_ratio=0.0)
    job = submit_job(
        db_engine, admin, preset("demo-lora", name="waits", dataset_version=version.id)
    )
    assert job.base_model == "demo"
    assert claim_next_job(db_engine, "test-worker", 60) is not None  # running, step 0
    build = subprocess.Popen(
        [sys.executable, "-m", "cli", "demo-model"],
        cwd=ROOT,
        env={**os.environ, "CLARA_DEMO_MODEL_SIZE": "small"},  # minutes: still running below
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (s := demo_build_status(settings)) is None or s.phase != "pre-training":
            assert build.poll() is None and time.monotonic() < deadline, s
            time.sleep(0.2)
        at.session_state["training_tab"] = "Jobs"
        at.run()
        assert not at.exception, at.exception
        texts = [p.proto.text for p in at.get("progress")]
        waiting = [t for t in texts if t.startswith("Waiting for the demo base model")]
        assert waiting and "pre-training step" in waiting[0], texts
    finally:
        build.kill()
        build.wait()
    assert demo_build_status(settings) is None  # a killed build is no build
