"""The Corpus page under Streamlit's AppTest (issue 10, items 11, 13 and 14): the ingest
report, the status row and the selection count show what the click just did, in the same
run; a hybrid search while embeddings are pending answers with keyword and graph and says
that vectors are still being computed, with a progress bar (real database, real files;
the page only queues an embed job for the worker, it runs nothing itself)."""

from __future__ import annotations

import pytest

from core.corpus.embedding import embedding_job
from tests.conftest import open_page

pytestmark = pytest.mark.slow


@pytest.fixture
def app(db_engine, settings, monkeypatch):
    return open_page(monkeypatch, "pages/corpus.py", timeout=300)


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _button(at, label: str, key: str | None = None):
    return next(b for b in at.button if b.label == label and (key is None or b.key == key))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_views_reflect_each_action_at_once_and_search_never_waits_for_vectors(app, db_engine):
    at = app
    assert _metric(at, "Documents") == "0"
    _button(at, "Load sample corpus").click()
    at.run(timeout=600)
    assert not at.exception, at.exception
    # The report and the counts of this very run (no second click, no rerun needed).
    assert any("60 added" in s.value for s in at.success), [s.value for s in at.success]
    assert _metric(at, "Documents") == "60"
    assert int(_metric(at, "Pending embeddings")) > 0
    bars = [p for p in at.get("progress") if "Embeddings:" in str(p.proto.text)]
    assert bars, "no embedding progress bar"
    from core.permissions import SYSTEM

    job = embedding_job(db_engine, SYSTEM)
    assert job is not None and job.state == "queued"  # for the worker; no thread here
    assert not [b for b in at.button if b.label == "Load sample corpus"]

    at.text_input(key="corpus_query").input("Hundesteuer für gefährliche Hunde")
    at.radio(key="corpus_mode").set_value("hybrid")
    _button(at, "Search", "corpus_search_btn").click()
    at.run(timeout=120)
    assert not at.exception, at.exception
    said = " ".join(i.value for i in at.info) + " ".join(c.value for c in at.caption)
    assert "still being computed" in said, said
    table = next(d.value for d in at.dataframe if "snippet" in d.value.columns)
    assert table["doc_id"].iloc[0] == "hundesteuersatzung"

    picked = at.multiselect(key="corpus_pick").value
    assert picked
    _button(at, "Add to selection", "corpus_add_selection").click()
    at.run()
    assert not at.exception, at.exception
    assert _metric(at, "Selected for datasets") == str(len(picked))
    assert at.session_state["selection_documents"] == picked
