"""The Corpus page's forms as plain rules: widget values in, core arguments out.

Parsing, validation and defaults live here, not in the page, so that they are tested
without a browser and any other front end (the CLI, a service API) applies the same rules.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable

from pydantic import ValidationError

from core.corpus.documents import DocumentFilters
from core.corpus.ingest import IngestOptions
from core.corpus.search import SearchRequest
from core.errors import ClaraError


class FormError(ClaraError, ValueError):
    """The form's values cannot become a request; the message says what to change."""


def parse_metadata_filter(raw: str) -> tuple[dict[str, str], list[str]]:
    """`key=value, key=value` → ({key: value}, parts that were ignored because they are not
    `key=value`). Keys and values are stripped; an empty key is skipped silently."""
    meta: dict[str, str] = {}
    ignored: list[str] = []
    for part in (raw or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k.strip():
                meta[k.strip()] = v.strip()
        elif part.strip():
            ignored.append(part.strip())
    return meta, ignored


def document_filters(
    document_types: Iterable[str] = (),
    domains: Iterable[str] = (),
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    metadata: str = "",
) -> tuple[DocumentFilters, list[str]]:
    """The filters of a filter form, and a warning per metadata part that was ignored."""
    meta, ignored = parse_metadata_filter(metadata)
    filters = DocumentFilters(
        document_type=list(document_types),
        domain=list(domains),
        date_from=date_from,
        date_to=date_to,
        metadata=meta,
    )
    return filters, [f"Ignored {part!r}: write key=value." for part in ignored]


def search_request(
    query: str,
    mode: str,
    k: int,
    weights: dict[str, float],
    fusion: str,
    filters: DocumentFilters,
) -> SearchRequest:
    """The search the form asks for; FormError when it cannot run (no weight above 0, an
    empty query, anything else SearchRequest refuses)."""
    if sum(weights.values()) <= 0 and mode == "hybrid":
        raise FormError("Set at least one weight above 0.")
    if not query.strip():
        raise FormError("Type a question or keywords first.")
    try:
        return SearchRequest(
            query=query, mode=mode, k=int(k), weights=weights, fusion=fusion, filters=filters
        )
    except ValidationError as err:  # what the request itself refuses (weights, k, mode)
        reasons = (e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise FormError("; ".join(reasons)) from None


def ingest_options(
    document_type: str = "",
    domain: str = "",
    mapping: str = "",
    glob: str = "",
    link_key: str = "auto",
) -> IngestOptions:
    """Options of an ingest started from the page: empty fields mean "not set", and
    embeddings are left to the background (the page starts it after the ingest)."""
    return IngestOptions(
        document_type=document_type or None,
        domain=domain or None,
        mapping=mapping or None,
        globs=[glob] if glob else [],
        embed=False,
        link_key=link_key or "auto",
    )


def page_count(total: int, page_size: int) -> int:
    """How many pages `total` rows fill (at least one, so an empty list has a page)."""
    return max(1, math.ceil(total / page_size))


def page_offset(page_no: int, page_size: int) -> int:
    """The first row of page `page_no` (counted from 1)."""
    return (int(page_no) - 1) * page_size


def add_to_selection(selection: list[str], doc_ids: Iterable[str]) -> list[str]:
    """The selection with `doc_ids` added: in order, without repeats."""
    sel = list(selection)
    return sel + [d for d in dict.fromkeys(doc_ids) if d not in sel]
