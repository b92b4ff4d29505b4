"""The Training page in headless Chromium against `clara up` with its training worker:
submit from a preset, watch the loss chart grow, cancel, retry; and the page reflects every
action and every finished job at once (issue 10, item 14): the Adapters tab shows a new
adapter without leaving the page, a job submitted from the form is the job shown, choosing
another job keeps the Jobs tab open, and refreshes never show two copies of the job view.
Both tests share one workbench (its start is a good part of their time)."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import link_demo_model
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def trainbench(make_workbench, tmp_path_factory, shared_demo_model):
    wb = make_workbench(
        CLARA_START_WORKER="true", CLARA_DEMO_MODEL_SIZE="tiny", CLARA_TRAIN_THREADS="1"
    )
    # The demo model as `clara demo-model` builds it (once per test run, shared): the
    # command then finds it in place.
    link_demo_model(shared_demo_model, wb.data_dir)
    r = wb.cli("demo-model")
    assert r.returncode == 0, r.stderr
    rows = tmp_path_factory.mktemp("data") / "faq.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Wie hoch ist die Hundesteuer für {k} Hunde?"},
                        {
                            "role": "assistant",
                            "content": f"Für {k} Hunde sind es {90 * k} Euro im Jahr.",
                        },
                    ]
                }
            )
            for k in range(1, 41)
        )
        + "\n"
    )
    for args in (
        ("dataset", "import", "faq", str(rows), "--format", "messages"),
        ("dataset", "review", "accept", "faq"),
        ("dataset", "freeze", "faq", "--eval-ratio", "0.2"),
    ):
        r = wb.cli(*args)
        if r.returncode != 0:  # pytest.fail: the whole traceback, not a shortened repr
            pytest.fail(f"clara {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return wb


def _click_until(page, button: str, shows: re.Pattern, timeout: float = 60_000) -> None:
    """Click a button of the job view until the view shows `shows`. The view refreshes itself
    every few seconds (fragment); on a busy machine a click during a refresh can be lost."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    expected = page.get_by_text(shows)
    for _ in range(3):
        try:
            page.get_by_role("button", name=button).first.click(timeout=10_000)
        except PlaywrightTimeout:
            pass  # gone: the earlier click took effect after all
        try:
            expected.wait_for(timeout=timeout)
            return
        except PlaywrightTimeout:
            continue
    expected.wait_for(timeout=timeout)


def _loss_points(page) -> int:
    chart = page.locator(".js-plotly-plot").first
    if chart.count() == 0:
        return 0
    return chart.locator(".scatterlayer .trace .points path").count()


def test_submit_watch_cancel_retry(trainbench, page):
    login(page, trainbench)
    page.get_by_test_id("stSidebar").get_by_text("Training", exact=True).click()
    page.get_by_role("heading", name="Training").wait_for()

    # The form comes from the preset; a bad name is refused next to its field.
    page.get_by_label("Adapter name").fill("Not Valid")
    # Long enough that the retried attempt is still running when it is cancelled again.
    page.get_by_label("max_steps").fill("4000")
    page.get_by_label("save_steps").fill("200")
    page.get_by_label("logging_steps").fill("1")
    page.get_by_label("max_length").fill("64")
    page.get_by_role("button", name="Submit job").click()
    page.get_by_text("must be 1-64 characters").first.wait_for()

    page.get_by_label("Adapter name").fill("e2e-hund")
    page.get_by_role("button", name="Submit job").click()
    # The first submit imports transformers in the server (target-module check): allow time.
    page.get_by_text(re.compile(r"Queued job \d+ for adapter 'e2e-hund'")).wait_for(timeout=180_000)

    page.get_by_role("tab", name="Jobs").click()
    page.get_by_text(re.compile(r"Job \d+: e2e-hund — running")).wait_for(timeout=180_000)
    # The loss chart appears and then grows while the job trains (fragment auto-refresh).
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot .scatterlayer .points path').length >= 2",
        timeout=240_000,
    )
    first = _loss_points(page)
    page.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace')[0]"
        f".querySelectorAll('.points path').length > {first}",
        timeout=240_000,
    )

    _click_until(page, "Cancel", re.compile(r"Job \d+: e2e-hund — cancelled"))
    # The jobs table also holds this text in a hidden accessibility grid: wait for the
    # visible error box of the job view.
    page.get_by_text(re.compile(r"cancelled at step \d+, checkpoint saved")).filter(
        visible=True
    ).first.wait_for()

    _click_until(page, "Retry", re.compile(r"Job \d+: e2e-hund — running"), timeout=120_000)
    # The retried attempt resumes from the checkpoint written at cancel time. The page shows
    # only the log's tail, which training progress scrolls past within seconds on a fast
    # machine, so the job's log file is the witness.
    job = next(
        j
        for j in json.loads(trainbench.cli("train", "list", "--json").stdout)
        if j["name"] == "e2e-hund"
    )
    log = trainbench.data_dir / "logs" / "training" / f"job-{job['id']}.log"
    deadline = time.monotonic() + 240
    while "resuming from" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(1)
    assert "checkpoints/checkpoint-" in log.read_text(errors="replace").split("resuming from")[1]
    r = trainbench.cli("train", "list", "--json")
    jobs = json.loads(r.stdout)
    assert jobs[0]["name"] == "e2e-hund" and jobs[0]["attempts"] == 1
    _click_until(page, "Cancel", re.compile(r"Job \d+: e2e-hund — cancelled"))


def _fill_short_job(page, name: str) -> None:
    page.get_by_label("Adapter name").fill(name)
    page.get_by_label("max_steps").fill("4")
    page.get_by_label("save_steps").fill("2")
    page.get_by_label("logging_steps").fill("1")
    page.get_by_label("max_length").fill("64")


def _copies(page) -> tuple[int, int]:
    """Live job views and charts on screen at this moment. An element of the previous run
    that Streamlit is about to replace is marked data-stale while the rerun is under way;
    it is not a second view (on a loaded machine a rerun can take a moment)."""
    live = '[data-testid="stElementContainer"]:not([data-stale="true"])'
    heads = page.locator(f"{live} h3").filter(has_text=re.compile(r"^Job \d+: "))
    charts = page.locator(f"{live} .js-plotly-plot")
    return heads.count(), charts.count()


def _selected_tab(page) -> str:
    return page.locator('[role="tab"][aria-selected="true"]').first.inner_text().strip()


def test_views_follow_actions_and_finished_jobs(trainbench, page):
    login(page, trainbench)
    page.get_by_test_id("stSidebar").get_by_text("Training", exact=True).click()
    page.get_by_role("heading", name="Training").wait_for()

    _fill_short_job(page, "hard-one")
    page.get_by_role("button", name="Submit job").click()
    page.get_by_text(re.compile(r"Queued job \d+ for adapter 'hard-one'")).wait_for(timeout=180_000)
    first = int(re.search(r"Queued job (\d+)", page.get_by_text("Queued job").inner_text())[1])

    # Watch the Adapters tab while the job trains and finishes: no click, no navigation.
    page.get_by_role("tab", name="Adapters").click()
    page.get_by_text("No adapters yet").wait_for(timeout=30_000)  # e2e-hund never finishes
    page.get_by_text(re.compile(r"adapter hard-one")).first.wait_for(timeout=300_000)

    # A second job from the form: it is the job shown (not the one selected before).
    page.get_by_role("tab", name="New job").click()
    page.locator('[role="tab"][aria-selected="true"]', has_text="New job").wait_for()
    _fill_short_job(page, "hard-two")
    page.get_by_role("button", name="Submit job").click()
    page.get_by_text(re.compile(r"Queued job \d+ for adapter 'hard-two'")).wait_for(timeout=60_000)
    page.get_by_role("tab", name="Jobs").click()
    page.get_by_role("heading", name=re.compile(rf"^Job {first + 1}: hard-two")).wait_for(
        timeout=60_000
    )

    # Choose the first job again: it shows, and the Jobs tab stays open. Meanwhile the
    # second job trains and the view refreshes: never two job views or extra charts at once.
    page.get_by_label("Job", exact=True).click()
    page.get_by_role("option", name=re.compile(rf"^{first} · hard-one")).click()
    page.get_by_role("heading", name=re.compile(rf"^Job {first}: hard-one")).wait_for(
        timeout=60_000
    )
    worst = (0, 0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert _selected_tab(page) == "Jobs"
        heads, charts = _copies(page)
        worst = (max(worst[0], heads), max(worst[1], charts))
        page.wait_for_timeout(100)
    assert worst[0] == 1 and worst[1] <= 3, worst
    assert page.get_by_role("heading", name=re.compile(rf"^Job {first}: hard-one")).is_visible()
