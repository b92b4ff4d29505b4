"""/api/v1/corpus: upload and ingest, search, documents, related documents, saved searches.

Each route acts as the caller; core checks the permission (corpus:ingest to change the
corpus, corpus:search for everything else) and writes the audit rows. Document ids and
saved-search names may hold '/', so they are the rest of the path: the routes with a
suffix (`/related`, `/results`) are declared before the plain ones.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import ConfigDict, Field

from api.security import User
from api.shapes import MAX_PAGE, invalid, page, records
from core.corpus.chunking import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS
from core.corpus.documents import (
    DocumentFilters,
    DocumentView,
    corpus_stats,
    document_revisions,
    facet_values,
    get_document,
    list_documents,
    related_documents,
)
from core.corpus.embedding import start_embedding
from core.corpus.ingest import IngestOptions, ingest_uploads
from core.corpus.link_keys import LINK_KEYS
from core.corpus.search import (
    SavedSearchView,
    SearchRequest,
    SearchResponse,
    delete_saved_search,
    get_saved_search,
    list_saved_searches,
    save_search,
    search_response,
)
from core.corpus.store_writes import delete_document

router = APIRouter(prefix="/corpus", tags=["corpus"])

# How long a search waits for the embedding model (loading, or busy) before it answers
# without vectors and says so in `skipped`.
DEFAULT_VECTOR_WAIT_S = 30.0


class Filters(DocumentFilters):
    """Document filters; an unknown key is refused (a typo must not widen a search)."""

    model_config = ConfigDict(extra="forbid")


class SearchBody(SearchRequest):
    """A search: query, mode, k, weights (keyword/vector/graph), fusion, filters, graph seeds."""

    model_config = ConfigDict(extra="forbid")

    filters: Filters = Field(default_factory=Filters)


class SearchCall(SearchBody):
    vector_wait_s: float = Field(
        default=DEFAULT_VECTOR_WAIT_S,
        ge=0,
        le=300,
        description="the most seconds to wait for the embedding model; past it vector "
        "search is skipped and the answer says why",
    )


def _wanted(body: SearchBody) -> None:
    if not body.query.strip() and not body.seed_ids:
        raise invalid("body", "query", "give a query (or seed_ids with mode graph)")


# Ingest -----------------------------------------------------------------------------------


@router.post("/documents")
def upload(
    user: User,
    request: Request,
    files: Annotated[list[UploadFile], File(description="one or more files to ingest")],
    document_type: Annotated[str | None, Form(max_length=200)] = None,
    domain: Annotated[str | None, Form(max_length=200)] = None,
    mapping: Annotated[
        str | None,
        Form(
            max_length=2000,
            description="column mapping of tabular files: text=body,title=headline,id=key",
        ),
    ] = None,
    link_key: Annotated[Literal[LINK_KEYS], Form()] = "auto",  # type: ignore[valid-type]
    chunk_tokens: Annotated[int, Form(ge=16, le=8192)] = DEFAULT_CHUNK_TOKENS,
    chunk_overlap: Annotated[int, Form(ge=0)] = DEFAULT_CHUNK_OVERLAP,
    max_doc_mb: Annotated[float, Form(gt=0, le=1024)] = 10.0,
    embed: Annotated[
        Literal["queue", "later"],
        Form(description="queue: an embed job for the worker; later: leave them pending"),
    ] = "queue",
) -> dict[str, Any]:
    """Upload files and ingest them; answers the per-file report (200 also when files
    failed: see `ok` and each file's `status` and `problems`). Each file is one
    transaction: a file that fails leaves none of its documents. Documents are keyword-
    and graph-searchable at once; their embeddings are a queued job (`embed_job_id`)."""
    if chunk_overlap >= chunk_tokens // 2:
        raise invalid("body", "chunk_overlap", "must be below half of chunk_tokens")
    state = request.app.state
    options = IngestOptions(
        document_type=document_type or None,
        domain=domain or None,
        mapping=mapping or None,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        max_document_bytes=int(max_doc_mb * 1024 * 1024),
        embed=False,
        link_key=link_key,
    )
    uploads = [(f.filename or "upload", f.file.read()) for f in files]
    report = ingest_uploads(state.engine, user, uploads, options, state.settings)
    if embed == "queue" and report.pending_embeddings:
        report.embed_job_id = start_embedding(state.engine, user, state.settings)
    return {"ok": report.ok, **report.to_dict()}


# Search -----------------------------------------------------------------------------------


@router.post("/search", response_model=SearchResponse)
def search(user: User, request: Request, body: SearchCall) -> SearchResponse:
    """Search in one mode (keyword, vector, graph) or hybrid; every hit carries its
    normalised per-mode `scores` and `raw_scores`; `skipped` names modes that could not
    answer (e.g. vectors not computed yet) and why."""
    _wanted(body)
    state = request.app.state
    req = SearchRequest.model_validate(body.model_dump(exclude={"vector_wait_s"}))
    return search_response(
        state.engine, user, req, state.settings, vector_wait_s=body.vector_wait_s
    )


# Documents --------------------------------------------------------------------------------


@router.get("/documents")
def documents(
    user: User,
    request: Request,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    document_type: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies it
    domain: Annotated[list[str], Query()] = [],  # noqa: B006
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    title: Annotated[str | None, Query(max_length=500)] = None,
    meta: Annotated[
        list[str], Query(description="KEY=VALUE: a metadata field equals the value")
    ] = [],  # noqa: B006
    order_by: Literal["doc_id", "date", "ingested_at", "title"] = "doc_id",
) -> dict[str, Any]:
    """A page of documents (without their text), filtered, with the total matching."""
    metadata: dict[str, str] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise invalid("query", "meta", f"{item!r}: write KEY=VALUE")
        metadata[key.strip()] = value.strip()
    filters = DocumentFilters(
        document_type=document_type,
        domain=domain,
        date_from=date_from,
        date_to=date_to,
        title_contains=title or None,
        metadata=metadata,
    )
    frame, total = list_documents(request.app.state.engine, user, offset, limit, filters, order_by)
    return page(records(frame), total, offset, limit)


@router.get("/documents/{doc_id:path}/related")
def related(
    user: User,
    request: Request,
    doc_id: str,
    hops: Annotated[int, Query(ge=1, le=3)] = 1,
) -> dict[str, Any]:
    """The documents around one document in the graph (nodes with their distance, typed
    edges with their evidence)."""
    state = request.app.state
    get_document(state.engine, user, doc_id)  # 404 for an unknown document
    return related_documents(state.engine, user, doc_id, state.settings, hops=hops)


@router.get("/documents/{doc_id:path}")
def document(user: User, request: Request, doc_id: str) -> dict[str, Any]:
    """One document: text, metadata and its revisions."""
    engine = request.app.state.engine
    doc: DocumentView = get_document(engine, user, doc_id)
    revisions = records(document_revisions(engine, user, doc_id))
    return {**doc.model_dump(mode="json"), "revisions": revisions}


@router.delete("/documents/{doc_id:path}", status_code=204)
def remove_document(user: User, request: Request, doc_id: str) -> Response:
    """Delete a document from the database and the keyword, vector and graph indexes."""
    state = request.app.state
    delete_document(state.engine, user, doc_id, state.settings)
    return Response(status_code=204)


@router.get("/stats")
def stats(user: User, request: Request) -> dict[str, Any]:
    """Counts: documents, chunks, pending embeddings, edges, per type and domain."""
    return corpus_stats(request.app.state.engine, user)


@router.get("/facets")
def facets(user: User, request: Request) -> dict[str, list[str]]:
    """The document types and domains there are (for filters)."""
    return facet_values(request.app.state.engine, user)


# Saved searches ---------------------------------------------------------------------------


@router.get("/searches")
def saved_searches(
    user: User,
    request: Request,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """Saved searches by name, a page at a time."""
    rows = list_saved_searches(request.app.state.engine, user)
    items = [r.model_dump(mode="json") for r in rows[offset : offset + limit]]
    return page(items, len(rows), offset, limit)


@router.get("/searches/{name:path}/results", response_model=SearchResponse)
def saved_search_results(
    user: User,
    request: Request,
    name: str,
    k: Annotated[int | None, Query(ge=1, le=1000)] = None,
    vector_wait_s: Annotated[float, Query(ge=0, le=300)] = DEFAULT_VECTOR_WAIT_S,
) -> SearchResponse:
    """Run a saved search now (optionally with another k)."""
    state = request.app.state
    saved = get_saved_search(state.engine, user, name)
    overrides = {"k": k} if k is not None else {}
    return search_response(
        state.engine, user, saved.request, state.settings, vector_wait_s=vector_wait_s, **overrides
    )


@router.get("/searches/{name:path}", response_model=SavedSearchView)
def saved_search(user: User, request: Request, name: str) -> SavedSearchView:
    return get_saved_search(request.app.state.engine, user, name)


@router.put("/searches/{name:path}", response_model=SavedSearchView)
def save(user: User, request: Request, name: str, body: SearchBody) -> SavedSearchView:
    """Save a search under a name (replacing one of that name)."""
    _wanted(body)
    req = SearchRequest.model_validate(body.model_dump())
    return save_search(request.app.state.engine, user, name, req)


@router.delete("/searches/{name:path}", status_code=204)
def delete_search(user: User, request: Request, name: str) -> Response:
    delete_saved_search(request.app.state.engine, user, name)
    return Response(status_code=204)
