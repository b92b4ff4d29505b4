"""Search on both engines: each mode, German stemming, filters in the stores, hybrid weights,
graph expansion, saved searches."""

from __future__ import annotations

import pytest

from core.corpus.documents import DocumentFilters
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.search import (
    SavedSearchNotFound,
    SearchRequest,
    list_saved_searches,
    run_saved_search,
    save_search,
    search,
)

DOCS = {
    "hundesteuer.md": """---
title: Hundesteuersatzung
document_type: satzung
domain: steuern
date: 2022-12-08
zustaendig: Steueramt
---
Die Steuer für gefährliche Hunde beträgt jährlich 720 Euro. Für den ersten Hund 96 Euro.
""",
    "faq-hund.md": """---
title: Fragen zur Hundehaltung
document_type: faq
domain: steuern
date: 2024-03-01
zustaendig: Steueramt
links: [hundesteuer]
---
Wie melde ich meinen Welpen an? Die Anmeldung erfolgt im Bürgerbüro nach der Hundesteuersatzung.
""",
    "abfall.md": """---
title: Merkblatt Abfallgebühren
document_type: merkblatt
domain: umwelt
date: 2025-01-02
zustaendig: Umweltamt
links: [wertstoffhof]
---
Die Gebühren für die Biotonne und die Restmülltonne werden jährlich festgesetzt.
""",
    "wertstoffhof.md": """---
title: Wertstoffhof
document_type: merkblatt
domain: umwelt
date: 2023-05-01
zustaendig: Umweltamt
---
Sperrmüll und Grünschnitt können am Wertstoffhof abgegeben werden. Öffnungszeiten Dienstag
bis Samstag.
""",
    "bescheid-hund.md": """---
title: Bescheid über die Anmeldung eines Welpen
document_type: bescheid
domain: steuern
date: 2021-01-01
zustaendig: Bürgerbüro
links: [hundesteuer]
---
Ihr Welpe wurde im Bürgerbüro angemeldet. Die Steuermarke liegt bei.
""",
    "parken.md": """---
title: Bewohnerparken
document_type: merkblatt
domain: ordnung
date: 2025-01-02
zustaendig: "Ordnungsamt'; DROP TABLE corpus_documents; --"
---
Der Bewohnerparkausweis für Anwohner kostet 120 Euro im Jahr. Siehe auch Merkblatt
Abfallgebühren.
""",
}


@pytest.fixture
def corpus(db_engine, admin, settings, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    report = ingest_paths(db_engine, admin, [folder], IngestOptions(embed=True), settings)
    assert report.ok and report.added == 6 and report.pending_embeddings == 0
    return db_engine


def ids(results):
    return [r.doc_id for r in results]


def test_keyword_german_stemming_prefix_and_title_weight(corpus, admin, settings):
    run = lambda q, **kw: ids(search(corpus, admin, q, settings, mode="keyword", **kw))  # noqa: E731
    # Inflected forms meet: "Gebühr" finds "Gebühren", "Hunden" finds "Hunde".
    assert run("Gebühr")[0] == "abfall"
    assert "hundesteuer" in run("Hunden")
    # Compound prefix: "Hundesteuer" finds the "Hundesteuersatzung" title on both engines.
    assert run("Hundesteuer")[0] == "hundesteuer"
    # OR semantics: one matching word is enough.
    assert run("Sperrmüll Raumfahrt")[0] == "wertstoffhof"
    # Compound parts: "Müll" finds "Sperrmüll" and "Restmülltonne", which share no prefix.
    assert set(run("Müll")) == {"wertstoffhof", "abfall"}
    res = search(corpus, admin, "Biotonne", settings, mode="keyword")
    assert "«Biotonne»" in res[0].snippet and res[0].scores == {"keyword": 1.0}
    assert run("und oder der") == [] or isinstance(run("und oder der"), list)


def test_keyword_index_rebuild_reindexes_existing_documents(corpus, admin, settings):
    """What migrations 0006 and 0010 run on a corpus: drop, recreate, index every document."""
    from core.corpus.keyword import rebuild_keyword_index

    before = {
        q: ids(search(corpus, admin, q, settings, mode="keyword")) for q in ("Müll", "Welpen")
    }
    with corpus.begin() as conn:
        assert rebuild_keyword_index(conn, batch=2) == 6  # several batches
    after = {q: ids(search(corpus, admin, q, settings, mode="keyword")) for q in before}
    assert after == before and set(after["Müll"]) == {"wertstoffhof", "abfall"}


def test_terms_in_most_documents_are_left_out_only_on_large_corpora(
    db_engine, admin, settings, tmp_path, monkeypatch
):
    from core.corpus import keyword

    folder = tmp_path / "city"
    folder.mkdir()
    rare = ["Glockenturm", "Stadtbücherei", "Freibad", "Wochenmarkt", "Rathausplatz", "Kläranlage"]
    for i, word in enumerate(rare):
        (folder / f"d{i}.txt").write_text(f"{word}\n\nDie Stadt Bergheim betreibt {word}.\n")
    ingest_paths(db_engine, admin, [folder], IngestOptions(embed=False), settings)

    def left_out(query: str) -> set[str]:
        atoms = keyword.query_atoms(query)
        with db_engine.connect() as conn:
            n, _means, dfs = keyword._statistics(conn, atoms)
        kept = {a.term for a, _df in keyword._without_common(atoms, dfs, n)}
        return {a.term for a in atoms} - kept

    # Six documents: nothing is left out, however common.
    assert left_out("Bergheim Freibad") == set()
    monkeypatch.setattr(keyword, "COMMON_TERM_MIN_DOCS", 1)
    # "Bergheim" (and its parts berg|heim) is in every document: it has almost no idf and
    # ranking would read every one of its postings.
    assert left_out("Bergheim Freibad") == {"bergheim", "berg", "heim"}
    # Of a query made only of common terms, the rarest always stays.
    assert len(left_out("Bergheim Stadt")) == 4 - 1
    assert ids(search(db_engine, admin, "Bergheim Freibad", settings, mode="keyword")) == ["d2"]
    assert len(search(db_engine, admin, "Bergheim Stadt", settings, mode="keyword")) == 6


def test_rare_words_outweigh_common_ones_on_both_engines(db_engine, admin, settings, tmp_path):
    folder = tmp_path / "rarity"
    folder.mkdir()
    for i in range(5):
        (folder / f"mitteilung-{i}.txt").write_text(
            f"Bergheim Mitteilung {i}\n\nAmtliche Mitteilung Nummer {i} der Stadt.\n"
        )
    (folder / "notiz.txt").write_text("Notiz\n\nDas Freibad der Stadt Bergheim öffnet im Mai.\n")
    ingest_paths(db_engine, admin, [folder], IngestOptions(embed=False), settings)
    # "Bergheim" is in every title (weighted 4x), "Freibad" in one body: the rare word
    # decides (BM25's idf on SQLite; idf-weighted ts_rank_cd on Postgres).
    assert ids(search(db_engine, admin, "Bergheim Freibad", settings, mode="keyword"))[0] == "notiz"


def test_vector_mode_ranks_by_embedding_similarity(corpus, admin, settings):
    res = search(
        corpus,
        admin,
        "Sperrmüll und Grünschnitt am Wertstoffhof abgeben",
        settings,
        mode="vector",
        k=3,
    )
    assert res[0].doc_id == "wertstoffhof"
    assert set(res[0].scores) == {"vector"} and 0 < res[0].raw_scores["vector"] <= 1


@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid", "graph"])
def test_filters_apply_in_every_mode(corpus, admin, settings, mode):
    q = "Gebühren Hund Steuer Wertstoffhof Bewohnerparkausweis"
    cases = [
        (DocumentFilters(domain=["umwelt"]), {"abfall", "wertstoffhof"}),
        (DocumentFilters(document_type=["satzung", "faq"]), {"hundesteuer", "faq-hund"}),
        (DocumentFilters(date_from="2024-06-01"), {"abfall", "parken"}),
        (DocumentFilters(date_from="2023-01-01", date_to="2023-12-31"), {"wertstoffhof"}),
        (DocumentFilters(metadata={"zustaendig": "Steueramt"}), {"hundesteuer", "faq-hund"}),
        (
            DocumentFilters(
                metadata={"zustaendig": "Ordnungsamt'; DROP TABLE corpus_documents; --"}
            ),
            {"parken"},
        ),
    ]
    for filters, allowed in cases:
        got = set(
            ids(
                search(
                    corpus,
                    admin,
                    SearchRequest(query=q, mode=mode, k=10, filters=filters),
                    settings,
                )
            )
        )
        assert got and got <= allowed, (filters, got)
    assert len(ids(search(corpus, admin, q, settings, mode="keyword", k=10))) == 6


def test_graph_expands_from_given_documents_and_hops(corpus, admin, settings):
    one = search(corpus, admin, SearchRequest(mode="graph", seed_ids=["abfall"], hops=1), settings)
    assert ids(one)[0] == "abfall"
    # abfall links to wertstoffhof; parken cites "Merkblatt Abfallgebühren" in its text.
    assert set(ids(one)) == {"abfall", "wertstoffhof", "parken"}
    assert all(r.related_via for r in one if r.doc_id != "abfall")
    two = search(
        corpus, admin, SearchRequest(mode="graph", seed_ids=["faq-hund"], hops=2), settings
    )
    assert set(ids(two)) == {"faq-hund", "hundesteuer", "bescheid-hund"}
    assert {r.doc_id: r.raw_scores["graph"] for r in two}["bescheid-hund"] < 1.0


def test_graph_damps_hubs_that_everything_relates_to(db_engine, admin, settings, tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    # Seven notes link to one fee schedule; note 0 also links to one specific answer.
    (folder / "gebuehren.md").write_text("---\ntitle: Gebührenordnung\n---\nGebühren.\n")
    (folder / "antwort.md").write_text("---\ntitle: Antwort\n---\nDie Antwort.\n")
    for i in range(7):
        links = "[gebuehren, antwort]" if i == 0 else "[gebuehren]"
        (folder / f"notiz-{i}.md").write_text(
            f"---\ntitle: Notiz {i}\nlinks: {links}\n---\nNotiz Nummer {i}.\n"
        )
    ingest_paths(db_engine, admin, [folder], IngestOptions(embed=False), settings)
    found = search(db_engine, admin, SearchRequest(mode="graph", seed_ids=["notiz-0"]), settings)
    graph = {r.doc_id: r.raw_scores["graph"] for r in found}
    # Both are one links_to step away; the hub's support is divided by sqrt(7 / mean degree).
    assert ids(found)[:3] == ["notiz-0", "antwort", "gebuehren"]
    assert graph["gebuehren"] == pytest.approx(graph["antwort"] / (7 / (2 * 8 / 9)) ** 0.5)


def test_hybrid_weights_change_the_order(corpus, admin, settings):
    q = "Welpen Bürgerbüro"
    kw_heavy = search(
        corpus,
        admin,
        q,
        settings,
        mode="hybrid",
        weights={"keyword": 1.0, "vector": 0.0, "graph": 0.0},
    )
    graph_heavy = search(
        corpus,
        admin,
        q,
        settings,
        mode="hybrid",
        weights={"keyword": 0.05, "vector": 0.0, "graph": 1.0},
    )
    # Both keyword hits link to the Satzung, which has none of the query's words.
    assert set(ids(kw_heavy)) == {"faq-hund", "bescheid-hund"}
    assert ids(graph_heavy)[0] == "hundesteuer"
    assert graph_heavy[0].scores["keyword"] == 0.0 and graph_heavy[0].scores["graph"] == 1.0
    # The defaults (chosen on the development questions) leave the graph out; a weight
    # above 0 brings it in.
    assert set(search(corpus, admin, q, settings)[0].scores) == {"keyword", "vector"}
    full = search(corpus, admin, q, settings, weights={"graph": 0.1})
    assert set(full[0].scores) == {"keyword", "vector", "graph"}
    rrf = search(corpus, admin, q, settings, fusion="rrf")
    assert ids(rrf) and rrf[0].score < 0.05  # RRF scores are 1/(60+rank) sums


def test_saved_searches_round_trip(corpus, admin, settings):
    req = SearchRequest(
        query="Gebühren", mode="keyword", k=3, filters=DocumentFilters(domain=["umwelt"])
    )
    save_search(corpus, admin, "abfall", req)
    save_search(corpus, admin, "abfall", req.model_copy(update={"k": 2}))  # replaces
    (saved,) = list_saved_searches(corpus, admin)
    assert saved.request.k == 2 and saved.request.filters.domain == ["umwelt"]
    assert ids(run_saved_search(corpus, admin, "abfall", settings=settings))[0] == "abfall"
    with pytest.raises(SavedSearchNotFound):
        run_saved_search(corpus, admin, "nope", settings=settings)


def test_bad_requests_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown weight"):
        SearchRequest(query="x", weights={"bm25": 1})
    with pytest.raises(ValueError, match="at least one weight"):
        SearchRequest(query="x", weights={"vector": 0, "graph": 0, "keyword": 0})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        DocumentFilters.parse(["domain"])


def test_queries_of_stop_words_punctuation_or_a_pasted_page(corpus, admin, settings):
    """Bad input answers, never fails: only stop words still search for them, only
    punctuation finds nothing, 10,000 characters of distinct words are cut to the first
    terms (SQLite allows 500 selects in one compound statement)."""
    import random

    from core.corpus.search import search_response

    assert isinstance(search(corpus, admin, "und oder der", settings, mode="keyword"), list)
    assert search(corpus, admin, "?!… ;; --", settings, mode="keyword") == []
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyzäöü"
    page = " ".join("".join(rng.choice(letters) for _ in range(8)) for _ in range(1200))
    page = ("Welpen " + page)[:10_000]
    res = search_response(corpus, admin, page, settings, mode="hybrid", vector_wait_s=5.0)
    assert res.results and res.results[0].doc_id in {"bescheid-hund", "faq-hund"}
