"""Building samples from the real sample corpus: documents, chunks, templates, splitting,
saved searches, provenance (both engines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.search import SearchRequest, save_search
from core.datasets.builder import SampleTemplate, build_from_documents, build_from_saved_search
from core.datasets.errors import TemplateError
from core.datasets.review import list_samples
from core.datasets.service import create_dataset

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "corpus"
DOCS = ["hundesteuersatzung", "baumschutzsatzung", "friedhofssatzung"]


@pytest.fixture
def corpus(db_engine, admin, settings):
    report = ingest_paths(
        db_engine,
        admin,
        [CORPUS / f"{d}.md" for d in DOCS],
        IngestOptions(embed=False),
        settings=settings,
    )
    assert sum(f.counts["added"] for f in report.files) == 3
    return DOCS


def test_documents_to_chat_with_template_and_splitting(db_engine, admin, corpus):
    ds = create_dataset(db_engine, admin, "qa")
    rep = build_from_documents(
        db_engine, admin, ds.id, corpus + ["gibt-es-nicht"], template="was-regelt", max_tokens=200
    )
    assert rep.missing == ["gibt-es-nicht"] and rep.documents == 3
    assert rep.split_documents == 3 and rep.added > 3
    page = list_samples(db_engine, admin, ds.id, sort="id_asc", limit=200)
    first = page.items[0]
    assert first.kind == "chat"
    assert first.messages[0]["content"].startswith("Was regelt ")
    prov = first.provenance
    assert prov["source"] == "corpus" and prov["doc_id"] == "hundesteuersatzung"
    assert prov["revision"] == 1 and prov["part"] == 1 and prov["template"] == "was-regelt"
    parts = [v for v in page.items if v.provenance["doc_id"] == "hundesteuersatzung"]
    assert [v.provenance["part"] for v in parts] == list(range(1, len(parts) + 1))
    assert all(v.provenance["parts"] == len(parts) for v in parts)
    # Parts cover the document in order, without gaps beyond whitespace.
    ends = [(v.provenance["start_char"], v.provenance["end_char"]) for v in parts]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))
    again = build_from_documents(
        db_engine, admin, ds.id, corpus, template="was-regelt", max_tokens=200
    )
    assert again.added == 0 and again.skipped_existing == rep.added


def test_chunks_and_custom_template(db_engine, admin, corpus):
    ds = create_dataset(db_engine, admin, "chunks")
    tpl = SampleTemplate(
        name="mine",
        kind="chat",
        system="Typ: {document_type}",
        user="Erkläre Abschnitt {part} aus {title}.",
        assistant="{text}",
    )
    rep = build_from_documents(db_engine, admin, ds.id, corpus[:1], tpl, unit="chunk")
    assert rep.added >= 1
    v = list_samples(db_engine, admin, ds.id, sort="id_asc").items[0]
    assert v.system == "Typ: satzung" and "chunk_index" in v.provenance
    assert v.provenance["template_fields"]["user"] == "Erkläre Abschnitt {part} aus {title}."
    with pytest.raises(TemplateError, match=r"unknown placeholder \{titel\}"):
        SampleTemplate(user="Was regelt {titel}?")


def test_text_samples_from_saved_search(db_engine, admin, corpus):
    save_search(db_engine, admin, "baeume", SearchRequest(query="Baum Fällung", mode="keyword"))
    ds = create_dataset(db_engine, admin, "pt")
    rep = build_from_saved_search(db_engine, admin, ds.id, "baeume", template="text", k=1)
    assert rep.documents == 1 and rep.added >= 1
    v = list_samples(db_engine, admin, ds.id).items[0]
    assert v.kind == "text" and v.provenance["saved_search"] == "baeume"
    assert v.provenance["doc_id"] == "baumschutzsatzung"
