"""Ingestion on both engines: every format, broken files, idempotence, revisions, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.corpus.documents import (
    DocumentNotFound,
    corpus_stats,
    document_revisions,
    get_document,
    iter_chunks,
    iter_documents,
    list_documents,
)
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.models import Chunk, Document, Edge
from core.corpus.sample import SAMPLE_DIR, SAMPLE_EXCLUDE
from core.corpus.search import search
from core.corpus.store_writes import delete_document
from core.permissions import PermissionDenied
from tests.conftest import principal

NO_EMBED = IngestOptions(embed=False)


def _count(engine, model, *where) -> int:
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(model).where(*where)).scalar_one()


def _kw(engine, admin, settings, query):
    return [r.doc_id for r in search(engine, admin, query, settings, mode="keyword", k=20)]


def test_sample_corpus_every_format_and_broken_files(db_engine, admin, settings):
    report = ingest_paths(
        db_engine,
        admin,
        [SAMPLE_DIR],
        IngestOptions(exclude=["README.md", "*/README.md"], embed=False),
        settings,
    )
    by_name = {Path(f.path).name: f for f in report.files}
    # 48 corpus files → 60 documents; broken/: 3 valid rows of fehlerhaft.jsonl + latin1.txt.
    assert report.added == 60 + 3 + 1
    assert by_name["kaputt.pdf"].status == "failed"
    assert "PDF is not readable" in by_name["kaputt.pdf"].problems[0]
    assert by_name["leer.txt"].status == "failed"
    assert "empty" in by_name["leer.txt"].problems[0]
    assert by_name["fehlende-spalte.csv"].status == "failed"
    assert "'text'" in by_name["fehlende-spalte.csv"].problems[0]
    assert by_name["fehlerhaft.jsonl"].status == "partial"
    assert by_name["fehlerhaft.jsonl"].problems == [
        "line 3: not valid JSON (Expecting value at column 1)"
    ]
    assert by_name["latin1.txt"].status == "ok" and "cp1252" in by_name["latin1.txt"].warnings[0]
    assert not report.ok
    # Failed files left nothing behind in any index.
    assert (
        _count(
            db_engine, Document, Document.doc_id.in_(["test-ent-1", "test-ent-2", "kaputt", "leer"])
        )
        == 0
    )
    stats = corpus_stats(db_engine, admin)
    assert stats["documents"] == 64 and stats["pending_embeddings"] == stats["chunks"] > 64
    # Graph edges of all three kinds: front matter, markdown/html links, citations in text.
    with db_engine.connect() as c:
        origins = set(c.execute(sa.select(Edge.origin).distinct()).scalars())
        cites = set(
            c.execute(
                sa.select(Edge.dst).where(Edge.src == "bauen-im-innenbereich", Edge.type == "cites")
            ).scalars()
        )
        mentions = dict(
            c.execute(
                sa.select(Edge.dst, sa.func.count())
                .where(Edge.origin == "mention")
                .group_by(Edge.dst)
            ).all()
        )
    assert {"links", "markdown_link", "html_link", "mention", "links_column"} <= origins
    assert "bauen-im-aussenbereich" in cites  # "§ 35 BauGB" in the text
    # The Musterbescheid's first line, and so its title, is the city's letterhead, which most
    # documents name: boilerplate, not a citation. Real names stay cited.
    assert "bescheid-sondernutzung-muster" not in mentions
    assert mentions["verwaltungsgebuehrensatzung"] >= 5
    doc = get_document(db_engine, admin, "bebauungsplan-muehlwiese")
    assert doc.metadata["page_count"] == 3 and doc.document_type == "satzung"
    assert doc.source_path.endswith("bebauungsplan-muehlwiese.pdf") and len(doc.sha256) == 64
    assert "Hundesteuersatzung" in get_document(db_engine, admin, "faq-hundesteuer").text


def test_reingest_is_idempotent_and_change_makes_revision(db_engine, admin, settings, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    f = folder / "merkblatt-test.md"
    f.write_text(
        "---\ntitle: Merkblatt Test\ndomain: umwelt\n---\n\nDie Biotonne wird "
        "wöchentlich geleert.\n",
        encoding="utf-8",
    )
    r1 = ingest_paths(db_engine, admin, [folder], NO_EMBED, settings)
    assert (r1.added, r1.updated, r1.unchanged) == (1, 0, 0)
    r2 = ingest_paths(db_engine, admin, [folder], NO_EMBED, settings)
    assert (r2.added, r2.updated, r2.unchanged) == (0, 0, 1)
    assert get_document(db_engine, admin, "merkblatt-test").revision == 1
    assert _count(db_engine, Chunk, Chunk.doc_id == "merkblatt-test") == 1
    assert "merkblatt-test" in _kw(db_engine, admin, settings, "wöchentlich")

    f.write_text(
        "---\ntitle: Merkblatt Test\ndomain: umwelt\n---\n\nDie Papiertonne wird "
        "monatlich geleert.\n",
        encoding="utf-8",
    )
    r3 = ingest_paths(db_engine, admin, [folder], NO_EMBED, settings)
    assert (r3.added, r3.updated) == (0, 1)
    doc = get_document(db_engine, admin, "merkblatt-test")
    assert doc.revision == 2 and "Papiertonne" in doc.text
    assert list(document_revisions(db_engine, admin, "merkblatt-test")["revision"]) == [1, 2]
    (chunk,) = iter_chunks(db_engine, admin, ["merkblatt-test"])
    assert chunk.revision == 2 and "Papiertonne" in chunk.text
    # The keyword index follows the new revision ("Biotonne" would still match the shared
    # compound part "tonne").
    assert "merkblatt-test" not in _kw(db_engine, admin, settings, "wöchentlich")
    assert "merkblatt-test" in _kw(db_engine, admin, settings, "monatlich")
    assert "merkblatt-test" in _kw(db_engine, admin, settings, "Papiertonnen")


def test_tabular_mapping_metadata_and_row_errors(db_engine, admin, settings, tmp_path):
    rows = [
        {
            "key": "r1",
            "body": "Wertstoffhof Öffnungszeiten Dienstag bis Samstag.",
            "headline": "Wertstoffhof",
            "refs": "r2",
            "zustaendig": "Umweltamt",
            "domain": "umwelt",
            "date": "2024-02-01",
        },
        {
            "key": "r2",
            "body": "Sperrmüll zweimal im Jahr kostenlos.",
            "headline": "Sperrmüll",
            "zustaendig": "Umweltamt",
            "domain": "umwelt",
            "date": "2024-03-01",
        },
        {"key": "r3", "headline": "ohne Text"},
    ]
    p = tmp_path / "faq.jsonl"
    p.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{kaputt\n", encoding="utf-8"
    )
    opts = IngestOptions(
        mapping="text=body,title=headline,id=key,links=refs", document_type="faq", embed=False
    )
    report = ingest_paths(db_engine, admin, [p], opts, settings)
    (fr,) = report.files
    assert fr.status == "partial" and report.added == 2
    assert fr.problems[0].startswith("line 3: field 'body' (mapped to text) is missing")
    assert fr.problems[1].startswith("line 4: not valid JSON")
    doc = get_document(db_engine, admin, "r1")
    assert doc.title == "Wertstoffhof" and doc.document_type == "faq"
    assert doc.metadata == {"zustaendig": "Umweltamt"} and str(doc.date) == "2024-02-01"
    with db_engine.connect() as c:
        assert c.execute(sa.select(Edge.dst).where(Edge.src == "r1")).scalars().all() == ["r2"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": ["p1"], "text": ["Parkett aus Parquet."], "title": ["P"]}),
        tmp_path / "t.parquet",
    )
    (tmp_path / "t.csv").write_text("id;text;title\nc1;Ein CSV-Dokument;C\n", encoding="utf-8")
    (tmp_path / "t.json").write_text(json.dumps([{"id": "j1", "text": "Ein JSON-Dokument"}]))
    report = ingest_paths(
        db_engine,
        admin,
        [tmp_path],
        IngestOptions(globs=["*.parquet", "*.csv", "*.json"], embed=False),
        settings,
    )
    assert report.ok and report.added == 3
    frame, total = list_documents(db_engine, admin, 0, 10, {"doc_ids": ["p1", "c1", "j1", "r1"]})
    assert total == 4 and set(frame["doc_id"]) == {"p1", "c1", "j1", "r1"}


def test_failed_file_leaves_nothing_and_oversized_line(db_engine, admin, settings, tmp_path):
    big = tmp_path / "riesig.txt"
    big.write_bytes(b"a" * (50 * 1024 * 1024))  # one 50 MB line
    ok = tmp_path / "gut.txt"
    ok.write_text("Gutes Dokument\nMit Inhalt über Straßenreinigung.", encoding="utf-8")
    csv_bad = tmp_path / "spalte.csv"
    csv_bad.write_text("id,title\nx1,Titel\n", encoding="utf-8")
    report = ingest_paths(db_engine, admin, [tmp_path], NO_EMBED, settings)
    status = {Path(f.path).name: (f.status, f.problems) for f in report.files}
    assert status["riesig.txt"][0] == "failed" and "MB limit" in status["riesig.txt"][1][0]
    assert status["spalte.csv"][0] == "failed"
    assert status["gut.txt"][0] == "ok" and report.added == 1
    assert _count(db_engine, Document) == 1
    assert _count(db_engine, Chunk, Chunk.doc_id.in_(["riesig", "x1"])) == 0
    assert _kw(db_engine, admin, settings, "Titel") == []


def test_delete_removes_document_from_every_index(db_engine, admin, settings, tmp_path):
    (tmp_path / "a.md").write_text(
        "---\ntitle: Dokument A\nlinks: [b]\n---\nAnlieger räumen Schnee bis 7 Uhr.",
        encoding="utf-8",
    )
    (tmp_path / "b.md").write_text("# Dokument B\nWinterdienst und Streupflicht.", encoding="utf-8")
    report = ingest_paths(db_engine, admin, [tmp_path], IngestOptions(embed=True), settings)
    assert report.ok and report.embedded == 2 and report.pending_embeddings == 0
    from core.corpus.vectors import get_vector_store

    store = get_vector_store(settings)
    assert len(store.document_ids("a")) == 1
    delete_document(db_engine, admin, "a", settings)
    with pytest.raises(DocumentNotFound):
        get_document(db_engine, admin, "a")
    assert _count(db_engine, Chunk, Chunk.doc_id == "a") == 0
    assert _count(db_engine, Edge, Edge.src == "a") == 0
    assert store.document_ids("a") == []
    assert _kw(db_engine, admin, settings, "Schnee") == []
    assert [
        r.doc_id for r in search(db_engine, admin, "Schnee räumen", settings, mode="vector", k=5)
    ] == ["b"]
    assert list(iter_documents(db_engine, admin, ["a", "b"]))[0].doc_id == "b"
    with pytest.raises(DocumentNotFound):
        delete_document(db_engine, admin, "a", settings)


def test_permissions(db_engine, settings, tmp_path):
    (tmp_path / "x.txt").write_text("Titel\nText", encoding="utf-8")
    with pytest.raises(PermissionDenied):
        ingest_paths(db_engine, principal("user"), [tmp_path], NO_EMBED, settings)
    with pytest.raises(PermissionDenied):
        get_document(db_engine, principal("user"), "x")
    report = ingest_paths(db_engine, principal("analyst"), [tmp_path], NO_EMBED, settings)
    assert report.added == 1
    with pytest.raises(PermissionDenied):
        delete_document(db_engine, principal("auditor"), "x", settings)
    from core.audit import read_audit_log
    from tests.conftest import principal as p

    log = read_audit_log(db_engine, p("admin", "admin"), action_prefix="corpus.")
    outcomes = set(zip(log.rows["action"], log.rows["outcome"], strict=True))
    assert {
        ("corpus.ingest", "denied"),
        ("corpus.ingest", "ok"),
        ("corpus.delete", "denied"),
    } <= outcomes


def test_sample_exclusions_match_readme():
    from core.corpus.files import collect_files

    files = collect_files([SAMPLE_DIR], exclude=SAMPLE_EXCLUDE)
    assert len(files) == 48 and not any("broken" in str(f) for f in files)
