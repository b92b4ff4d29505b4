"""Links that resolve or say why not (issue 12, item 4), on both engines.

Link values are matched to documents by id, file name, title and `name(section)` alias; an
ingest reports how many resolved and names the first that did not; an unresolved link is
kept and becomes an edge at the ingest that brings its target. Citation names come from a
document's id, title and declared short names, never from bracketed common words. A jsonl
whose ids are those of other files' documents is refused row by row, the stored ones kept.
Real database, real readers, the real `clara` process for `--link-key`.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from core.corpus.documents import corpus_stats, get_document
from core.corpus.graph import RelationalGraphStore
from core.corpus.ingest import IngestError, IngestOptions, ingest_paths
from core.corpus.models import Edge, LinkRef
from core.corpus.store_writes import delete_document
from tests.cli_run import clara

NO_EMBED = IngestOptions(embed=False)


def _edges(engine, *where) -> set[tuple[str, str, str]]:
    with engine.connect() as c:
        return set(c.execute(sa.select(Edge.src, Edge.dst, Edge.origin).where(*where)).tuples())


def _waiting(engine) -> list[tuple[str, str]]:
    with engine.connect() as c:
        return sorted(c.execute(sa.select(LinkRef.src, LinkRef.ref)).tuples())


def _man_page(folder, name: str, section: str, see_also: list[str]) -> None:
    refs = "".join(f"\n  - {r}" for r in see_also)
    (folder / f"{name}.{section}.md").write_text(
        f"---\ntitle: {name.upper()}({section})\nsee_also:{refs}\n---\n"
        f"# {name.upper()}({section})\n\n{name} - Handbuchseite zum Befehl {name}.\n",
        encoding="utf-8",
    )


def test_man_page_links_resolve_now_or_when_their_target_arrives(
    db_engine, admin, settings, tmp_path
):
    man = tmp_path / "man"
    man.mkdir()
    _man_page(man, "rm", "1", ["mv(1)", "unlink(2)", "rm(1)"])
    _man_page(man, "mv", "1", ["rm(1)", "cp(1)"])
    report = ingest_paths(db_engine, admin, [man], NO_EMBED, settings)
    assert report.ok, report.problems()
    assert {d.doc_id for f in report.files for d in f.documents} == {"rm.1", "mv.1"}
    assert _edges(db_engine, Edge.origin == "see_also") == {
        ("rm.1", "mv.1", "see_also"),
        ("mv.1", "rm.1", "see_also"),
    }
    links = report.links
    # rm(1) in rm's own list is a link to itself: resolved, no edge.
    assert (links.resolved, links.unresolved, links.resolved_earlier) == (3, 2, 0)
    assert {(u["src"], u["ref"]) for u in links.first_unresolved} == {
        ("rm.1", "unlink(2)"),
        ("mv.1", "cp(1)"),
    }
    assert all("no document matches" in u["reason"] for u in links.first_unresolved)
    summary = report.to_dict()["summary"]
    assert (summary["links_resolved"], summary["links_unresolved"]) == (3, 2)
    assert _waiting(db_engine) == [("mv.1", "cp(1)"), ("rm.1", "unlink(2)")]
    assert corpus_stats(db_engine, admin)["unresolved_links"] == links.unresolved_total == 2
    graph = RelationalGraphStore(db_engine)
    assert [n.doc_id for n in graph.neighbours(["rm.1"])] == ["mv.1"]

    # The targets arrive in a later ingest: the kept links become edges then.
    later = tmp_path / "later"
    later.mkdir()
    _man_page(later, "unlink", "2", [])
    _man_page(later, "cp", "1", ["https://example.org/cp.html", '"#optionen"'])
    report = ingest_paths(db_engine, admin, [later], NO_EMBED, settings)
    assert (report.links.resolved, report.links.unresolved) == (0, 0)  # external: not links
    assert report.links.resolved_earlier == 2 and report.links.unresolved_total == 0
    assert _waiting(db_engine) == []
    assert {("rm.1", "unlink.2"), ("mv.1", "cp.1")} <= {
        (s, d) for s, d, _o in _edges(db_engine, Edge.origin == "see_also")
    }
    assert {n.doc_id for n in graph.neighbours(["rm.1"])} == {"mv.1", "unlink.2"}

    # A changed document's links are matched again; its old waiting ones go.
    _man_page(man, "rm", "1", ["ls(1)"])
    report = ingest_paths(db_engine, admin, [man / "rm.1.md"], NO_EMBED, settings)
    assert report.updated == 1 and report.links.unresolved == 1
    assert _waiting(db_engine) == [("rm.1", "ls(1)")]
    assert ("rm.1", "mv.1", "see_also") not in _edges(db_engine)
    delete_document(db_engine, admin, "rm.1", settings)  # its waiting links go with it
    assert _waiting(db_engine) == []


def test_a_link_column_of_mixed_forms_and_the_link_key(db_engine, admin, settings, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notizen.md").write_text(
        "---\nid: notiz-7\n---\n# Notizen\n\nNotizen zum Haushalt.\n", encoding="utf-8"
    )
    (src / "ls.1.md").write_text("# LS(1)\n\nls listet Verzeichnisse.\n", encoding="utf-8")
    rows = [
        {"id": "b", "title": "Gebührenordnung der Stadt", "text": "Gebühren."},
        {
            "id": "a",
            "title": "Übersicht",
            "text": "Eine Übersicht.",
            # by id, by title (other case and spacing), by file name, by alias, nothing
            "links": ["b", "gebührenordnung  DER Stadt", "notizen.md", "ls (1)", "fehlt-7"],
        },
    ]
    (src / "docs.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    report = ingest_paths(db_engine, admin, [src], NO_EMBED, settings)
    assert report.ok, report.problems()
    assert {d for s, d, _o in _edges(db_engine, Edge.src == "a")} == {"b", "notiz-7", "ls.1"}
    assert (report.links.resolved, report.links.unresolved) == (4, 1)
    assert [u["ref"] for u in report.links.first_unresolved] == ["fehlt-7"]

    # Under `id` only the value that is an id resolves; the others wait, each saying why.
    rows[1]["text"] = "Eine neue Übersicht."
    (src / "docs.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    report = ingest_paths(
        db_engine, admin, [src / "docs.jsonl"], IngestOptions(embed=False, link_key="id"), settings
    )
    assert {d for s, d, _o in _edges(db_engine, Edge.src == "a")} == {"b"}
    assert (report.links.resolved, report.links.unresolved) == (1, 4)
    assert {u["reason"] for u in report.links.first_unresolved} == {"no document matches by id"}
    with pytest.raises(IngestError, match="link key 'guess'"):
        ingest_paths(db_engine, admin, [src], IngestOptions(embed=False, link_key="guess"))


def test_bracketed_words_in_titles_are_no_citation_names(db_engine, admin, settings, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = {
        "parkordnung-2": "---\ntitle: Parkordnung (erweitert)\n---\nRegeln zum Parken.\n",
        "merkblatt-9": "---\ntitle: Merkblatt Anwohner (Stand 2024)\n---\nAusweise.\n",
        "stellplaetze": (
            "---\ntitle: Regeln für Stellplätze\nshort_name: Stellplatzregeln\n---\n"
            "Stellplätze je Wohnung.\n"
        ),
        "bericht": (
            "# Bericht\n\nNach den Stellplatzregeln und der Parkordnung (erweitert) ist "
            "das zulässig.\n"
        ),
        "notiz": "# Notiz\n\nDie Liste wurde erweitert. Stand 2024 gilt sie weiter.\n",
    }
    for name, body in docs.items():
        (src / f"{name}.md").write_text(body, encoding="utf-8")
    report = ingest_paths(db_engine, admin, [src], NO_EMBED, settings)
    assert report.ok, report.problems()
    cites = {(s, d, e) for s, d, e in _cites(db_engine)}
    # The declared short name and the whole title cite; "erweitert" and "Stand 2024" alone
    # (notiz) cite nothing, although titles bracket them.
    assert cites == {
        ("bericht", "stellplaetze", "stellplatzregeln"),
        ("bericht", "parkordnung-2", "parkordnung erweitert"),
    }


def _cites(engine) -> list[tuple[str, str, str]]:
    with engine.connect() as c:
        return list(
            c.execute(
                sa.select(Edge.src, Edge.dst, Edge.evidence).where(Edge.origin == "mention")
            ).tuples()
        )


def test_jsonl_ids_colliding_with_stored_documents(db_engine, admin, settings, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "satzung.md").write_text("# Satzung\n\nDer ursprüngliche Text.\n", encoding="utf-8")
    ingest_paths(db_engine, admin, [src], NO_EMBED, settings)
    rows = [
        {"id": "satzung", "text": "Eine ganz andere Zeile."},
        {"id": "neu-1", "text": "Ein neues Dokument."},
    ]
    (tmp_path / "import.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    report = ingest_paths(db_engine, admin, [tmp_path / "import.jsonl"], NO_EMBED, settings)
    (f,) = report.files
    assert f.status == "partial" and report.added == 1
    assert len(f.problems) == 1
    assert f.problems[0].startswith("line 1: id 'satzung' is already the id of a document from ")
    assert "satzung.md; not ingested (the stored one is kept)" in f.problems[0]
    assert "--map id=COLUMN" in f.problems[0]
    kept = get_document(db_engine, admin, "satzung")
    assert "ursprüngliche" in kept.text and kept.revision == 1
    # The document's own file still makes new revisions.
    (src / "satzung.md").write_text("# Satzung\n\nDer geänderte Text.\n", encoding="utf-8")
    report = ingest_paths(db_engine, admin, [src], NO_EMBED, settings)
    assert report.ok and report.updated == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_link_key_title(db_engine, settings, tmp_path):
    rows = [
        {"id": "k1", "title": "Kurzzeitparken", "text": "Parken bis zwei Stunden."},
        {"id": "k2", "title": "Anwohnerparken", "text": "Ausweise.", "links": "Kurzzeitparken"},
        {"id": "k3", "title": "Gebühren", "text": "Gebühren.", "links": "k1; Dauerparken"},
    ]
    path = tmp_path / "parken.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    proc = clara(settings, "corpus", "ingest", str(path), "--link-key", "title", "--no-embed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "links: 1 resolved, 2 unresolved" in proc.stdout
    assert "k3 → 'k1': no document matches by title" in proc.stderr
    assert "k3 → 'Dauerparken'" in proc.stderr
    assert _edges(db_engine, Edge.origin == "links_column") == {("k2", "k1", "links_column")}

    proc = clara(settings, "corpus", "ingest", str(path), "--link-key", "nickname")
    assert proc.returncode != 0
    assert "link key 'nickname': use one of auto, id, filename, title, alias" in proc.stderr


def test_migration_moves_dangling_declared_edges_to_waiting_links(settings, admin, tmp_path):
    """Edges of earlier ingests that point at nothing (a `mv(1)` link stored as the id
    "mv(1)") become waiting links, and the next ingest resolves them."""
    from core.corpus.models import Document
    from core.db import get_engine, upgrade
    from core.users import ensure_admin

    engine = get_engine(settings)
    upgrade(engine, "0010_keyword_postings")
    doc = {"revision": 1, "text": "t", "sha256": "0" * 64, "language": "de", "metadata": {}}
    with engine.begin() as c:
        c.execute(
            sa.insert(Document),
            [
                {"doc_id": "rm.1", "title": "RM(1)", **doc},
                {"doc_id": "ls.1", "title": "LS(1)", **doc},
            ],
        )
        c.execute(
            sa.insert(Edge),
            [
                {"src": "rm.1", "dst": "mv(1)", "type": "links_to", "origin": "see_also",
                 "evidence": "mv(1)"},
                {"src": "rm.1", "dst": "ls.1", "type": "links_to", "origin": "see_also",
                 "evidence": "ls.1"},
                {"src": "ls.1", "dst": "verwaltungsgebuehrensatzung", "type": "cites",
                 "origin": "mention", "evidence": "verwaltungsgebührensatzung"},
            ],
        )  # fmt: skip
    upgrade(engine)
    ensure_admin(engine, "adminpass1")
    assert _waiting(engine) == [("rm.1", "mv(1)")]
    assert {(s, d) for s, d, _o in _edges(engine)} == {
        ("rm.1", "ls.1"),
        ("ls.1", "verwaltungsgebuehrensatzung"),
    }
    man = tmp_path / "man"
    man.mkdir()
    _man_page(man, "mv", "1", [])
    report = ingest_paths(engine, admin, [man], NO_EMBED, settings)
    assert report.links.resolved_earlier == 1 and _waiting(engine) == []
    assert ("rm.1", "mv.1", "see_also") in _edges(engine)
