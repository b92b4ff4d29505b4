"""The Corpus page's form rules (core.corpus.forms): widget values → core arguments."""

from __future__ import annotations

import datetime as dt

import pytest

from core.corpus.documents import DocumentFilters
from core.corpus.forms import (
    FormError,
    add_to_selection,
    document_filters,
    ingest_options,
    page_count,
    page_offset,
    parse_metadata_filter,
    search_request,
)
from core.corpus.search import DEFAULT_WEIGHTS


def test_metadata_filter_takes_key_value_pairs_and_names_what_it_ignored():
    meta, ignored = parse_metadata_filter(" zustaendig = Umweltamt, jahr=2024,  oops , =x, ")
    assert meta == {"zustaendig": "Umweltamt", "jahr": "2024"}
    assert ignored == ["oops"]
    assert parse_metadata_filter("") == ({}, [])
    assert parse_metadata_filter("a=b=c") == ({"a": "b=c"}, [])


def test_document_filters_from_form_values():
    filters, warnings = document_filters(
        ["Satzung"], ["Umwelt"], dt.date(2020, 1, 1), None, "zustaendig=Umweltamt, kaputt"
    )
    assert filters == DocumentFilters(
        document_type=["Satzung"],
        domain=["Umwelt"],
        date_from=dt.date(2020, 1, 1),
        metadata={"zustaendig": "Umweltamt"},
    )
    assert warnings == ["Ignored 'kaputt': write key=value."]
    empty, none = document_filters()
    assert empty == DocumentFilters() and none == []


def test_search_request_validates_like_the_page_did():
    f = DocumentFilters()
    zero = {"vector": 0.0, "graph": 0.0, "keyword": 0.0}
    with pytest.raises(FormError, match="at least one weight"):
        search_request("Hundesteuer", "hybrid", 10, zero, "weighted", f)
    with pytest.raises(FormError, match="Type a question"):
        search_request("   ", "keyword", 10, DEFAULT_WEIGHTS, "weighted", f)
    # What SearchRequest itself refuses is a FormError too, not a crash of the page.
    with pytest.raises(FormError, match="at least one weight must be above 0"):
        search_request("Hundesteuer", "keyword", 10, zero, "weighted", f)
    req = search_request("Hundesteuer", "keyword", 7.0, DEFAULT_WEIGHTS, "rrf", f)
    assert (req.query, req.mode, req.k, req.fusion) == ("Hundesteuer", "keyword", 7, "rrf")
    assert isinstance(req.k, int)


def test_ingest_options_from_form_values():
    opts = ingest_options("", "", "", "")
    assert (opts.document_type, opts.domain, opts.mapping, opts.globs) == (None, None, None, [])
    assert opts.embed is False  # the page embeds in the background after the ingest
    opts = ingest_options("Satzung", "Bauen", "text=body", "*.md")
    assert (opts.document_type, opts.domain, opts.mapping) == ("Satzung", "Bauen", "text=body")
    assert opts.globs == ["*.md"]


def test_paging():
    assert [page_count(n, 25) for n in (0, 1, 25, 26, 60)] == [1, 1, 1, 2, 3]
    assert [page_offset(p, 25) for p in (1, 2, 3)] == [0, 25, 50]


def test_selection_keeps_order_without_repeats():
    assert add_to_selection(["a", "b"], ["b", "c", "a", "d", "c"]) == ["a", "b", "c", "d"]
    assert add_to_selection([], []) == []
