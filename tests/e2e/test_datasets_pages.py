"""The Datasets and Review pages in headless Chromium against `clara up`: build a dataset from
the sample corpus, score it, reject one sample, edit one, freeze, export and download."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import login, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "corpus"
DOCS = ["hundesteuersatzung.md", "baumschutzsatzung.md", "friedhofssatzung.md"]
EDITED = "Bearbeitete Antwort aus dem Browsertest."


@pytest.fixture(scope="module")
def workbench(make_workbench):
    # Scoring is a job of the queue: this workbench runs its worker, as `clara up` does.
    return make_workbench(CLARA_START_WORKER="true")


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _open(page, title: str) -> None:
    # Through the sidebar: a fresh URL would start a new session before the cookie login.
    page.get_by_test_id("stSidebar").get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title).wait_for(timeout=120_000)


def _expand(page, label: str, inner) -> None:
    """Open an expander and wait until `inner` shows. Clicks only while it is closed: a
    second click on a slow rerun would close it again."""
    details = page.locator("details", has=page.locator("summary", has_text=label)).first
    for _ in range(10):
        if details.get_attribute("open") is None:
            details.locator("summary").click()
        try:
            inner.wait_for(timeout=5_000)
            return
        except Exception:
            continue
    inner.wait_for()


def _wait_text(page, text: str, timeout: float = 120_000):
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def test_build_score_review_freeze_export(workbench, page, tmp_path):
    _ok(workbench.cli("corpus", "ingest", *[str(CORPUS / d) for d in DOCS], "--no-embed"))
    _ok(
        workbench.cli(
            "corpus", "search", "Satzung", "--mode", "keyword", "--k", "3", "--save", "satzungen"
        )
    )
    login(page, workbench)

    # Datasets page: create, then build from the saved search through a template.
    _open(page, "Datasets")
    page.get_by_label("Name", exact=True).fill("e2e")
    page.get_by_role("button", name="Create dataset").click()
    _wait_text(page, "Created dataset e2e.")
    page.get_by_text("Saved search", exact=True).click()
    page.get_by_role("button", name="Build samples from saved search").click()
    _wait_text(page, "from 3 document(s)")

    # Score in the background; the page polls the run and shows when it is done.
    page.get_by_role("button", name="Score dataset").click()
    _wait_text(page, "Scoring run 1 done", timeout=180_000)

    # Review page: reject the first sample with the keyboard (r + Enter).
    _open(page, "Review")
    card_title = page.locator("strong", has_text="Sample ").first
    card_title.wait_for(timeout=120_000)
    first_id = int(card_title.inner_text().split()[1])
    shortcut = page.get_by_label("Keyboard: type a (accept)", exact=False)
    shortcut.fill("r")
    shortcut.press("Enter")
    _wait_text(page, f"Sample {first_id} rejected.")

    # Edit the next one (its assistant answer) and accept it in the same step.
    # The card re-renders with the next pending sample (stale elements linger briefly).
    for _ in range(120):
        if card_title.inner_text().strip() != f"Sample {first_id}":
            break
        page.wait_for_timeout(1000)
    # Only once the rerun is over: a stale form of the rejected sample took the edit before.
    wait_idle(page)
    second_id = int(card_title.inner_text().split()[1])
    assert second_id != first_id
    answer = page.get_by_label("assistant")
    _expand(page, "Edit this sample", answer)
    answer.fill(EDITED)
    page.get_by_role("button", name="Save and accept").click()
    _wait_text(page, f"Sample {second_id} edited (the original is kept).")

    # Accept everything still pending in one bulk step. The expander's label holds the
    # count of matching samples, so a rerun after the edit can show it closed again: open
    # it (again) before each look inside.
    confirm = page.get_by_text("Yes, change all", exact=False)
    checkbox = page.get_by_role("checkbox", name=re.compile("Yes, change all"))
    accept_all = page.get_by_role("button", name="Accept all matching")
    for _ in range(10):
        _expand(page, "Bulk decision for all", confirm)
        try:
            if accept_all.is_enabled(timeout=5_000):
                break
            if not checkbox.is_checked(timeout=5_000):
                confirm.click(timeout=5_000)
        except Exception:
            continue
        page.wait_for_timeout(3000)  # the rerun that enables the button
    _expand(page, "Bulk decision for all", confirm)
    accept_all.click()
    _wait_text(page, "sample(s) accepted.")

    # Freeze on the Datasets page, then export and download.
    _open(page, "Datasets")
    page.get_by_role("tab", name="Versions").click()
    page.get_by_role("button", name="Freeze", exact=False).click()
    _wait_text(page, "Froze e2e@v1")
    page.get_by_role("tab", name="Export").click()
    page.get_by_role("button", name="Export", exact=True).click()
    _wait_text(page, "Exported e2e@v1 as messages/jsonl")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download train.jsonl").click()
    target = tmp_path / "train.jsonl"
    dl.value.save_as(target)
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["messages"][0]["role"] == "user" for r in rows)

    shown = json.loads(_ok(workbench.cli("dataset", "show", "e2e", "--json")))
    counts = shown["dataset"]["counts"]
    assert counts["rejected"] == 1 and counts["pending"] == 0
    version = shown["versions"][0]
    assert version["counts"]["total"] == counts["accepted"]
    frozen = {
        r["id"]: r
        for part in ("train", "eval")
        for r in _read_parquet(Path(version["path"]) / f"{part}.parquet")
    }
    assert str(first_id) not in frozen
    assert frozen[str(second_id)]["messages"][-1]["content"] == EDITED


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
