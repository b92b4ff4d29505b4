"""The Corpus page in headless Chromium against `clara up`: load the sample corpus, search,
open a document, see its related documents, put documents into the dataset selection."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _open(page, title: str) -> None:
    page.get_by_test_id("stSidebar").get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title).wait_for()


def test_load_sample_search_open_document_and_select(workbench, page):
    login(page, workbench)
    _open(page, "Corpus")
    page.get_by_role("button", name="Load sample corpus").click()
    page.get_by_text("60 added", exact=False).first.wait_for(timeout=180_000)
    # The broken files are not part of the sample, so the report is clean.
    page.get_by_text("0 failed", exact=False).first.wait_for()

    page.get_by_role("tab", name="Search").click()
    page.get_by_role("textbox", name="Search", exact=True).fill("Hundesteuer für gefährliche Hunde")
    page.get_by_text("keyword", exact=True).click()
    # The live button: during a rerun Streamlit may still show the previous one, marked stale.
    live = page.locator('[data-testid="stElementContainer"]:not([data-stale="true"])')
    live.get_by_role("button", name="Search", exact=True).click()
    page.get_by_test_id("stDataFrame").first.wait_for()
    # The first result is preselected in the "Open a result" box.
    page.get_by_role("button", name="Open document").click()
    page.get_by_text("Showing hundesteuersatzung", exact=False).wait_for()

    page.get_by_role("tab", name="Document").click()
    page.get_by_role(
        "heading", name="Hundesteuersatzung der Stadt Bergheim an der Lauter"
    ).wait_for()
    page.get_by_text("Related documents").wait_for()
    page.get_by_test_id("stPlotlyChart").first.wait_for()
    # The text is shown as text: the Markdown heading marks are visible, not rendered.
    page.get_by_text("## § 1 Steuergegenstand", exact=False).first.wait_for()
    selected = page.get_by_test_id("stMetric").filter(has_text="Selected for datasets")
    selected.get_by_text("0", exact=True).wait_for()
    page.get_by_role("button", name="Add to selection").last.click()
    # The count follows the click in the same run (issue 10, item 14: it stayed 0).
    selected.get_by_text("1", exact=True).wait_for(timeout=10_000)

    stats = json.loads(workbench.cli("corpus", "stats", "--json").stdout)
    assert stats["documents"] == 60 and stats["by_edge_type"]["cites"] > 0
    related = json.loads(workbench.cli("corpus", "show", "hundesteuersatzung", "--json").stdout)
    assert {"faq-hundesteuer", "bescheid-hundesteuer-muster"} <= {
        e["dst"] for e in related["related"]
    } | {e["src"] for e in related["related"]}


def test_up_loads_the_sample_when_asked(make_workbench):
    wb = make_workbench(CLARA_LOAD_SAMPLE="yes")
    proc = wb.cli("corpus", "stats", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["documents"] == 60
    search = wb.cli("corpus", "search", "Winterdienst Schnee räumen", "--mode", "keyword", "--json")
    # Both documents on winter road clearing lead (their order is the ranking's business,
    # measured in bench/corpus_search_quality.py).
    top = [hit["doc_id"] for hit in json.loads(search.stdout)[:2]]
    assert set(top) == {"merkblatt-winterdienst", "strassenreinigungssatzung"}
