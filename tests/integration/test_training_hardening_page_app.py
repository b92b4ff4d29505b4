"""The Training page follows an action at once (issue 10, item 14), under AppTest: a job
submitted from the form is the job shown (not the one chosen before), and the Jobs tab stays
open across reruns."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.datasets.service import SampleIn, add_samples, create_dataset
from core.datasets.versions import freeze
from core.training.jobs import submit_sleep_job
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def app(db_engine, settings, monkeypatch):
    monkeypatch.setenv("CLARA_AUTH", "off")
    from core.config import get_settings

    get_settings.cache_clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/training.py")
    at.run()
    assert not at.exception, at.exception
    return at


def _headings(at) -> list[str]:  # noqa: ANN001
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
