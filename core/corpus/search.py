"""Search: keyword, vector, graph and hybrid, each result with its per-mode breakdown.

Hybrid fuses normalised mode scores (see _normalise) with user weights or, optionally, by
reciprocal rank fusion. The default weights (keyword 0.65, vector 0.35, graph 0) were chosen on
the development questions only (bench/corpus_search_quality.py; bench/RESULTS.md): the best
MRR@10 whose hit@5 is not below the best single mode's. Graph support added nothing there, so
by default it is not computed; a weight above 0 brings it in. The graph score of a document
is the support it gets from the top keyword/vector hits it is related to, so documents that
several good hits cite rise even when their own wording differs from the question.
Filters run inside the stores: SQL WHERE for keyword and graph, a Chroma where-clause for
vectors; the final fetch applies them in SQL once more for documents reached by the graph.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections import OrderedDict, defaultdict
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Engine

from core.audit import audited
from core.config import Settings, get_settings
from core.corpus import keyword
from core.corpus.documents import DocumentFilters
from core.corpus.graph import get_graph_stores, query_store
from core.corpus.models import Chunk, Document, SavedSearch
from core.corpus.text import query_terms, snippet
from core.errors import ClaraError, NotFound
from core.ops.measures import observe_search
from core.permissions import Principal, require

if TYPE_CHECKING:  # annotations only; keyword and graph search need no numpy
    import numpy as np

Mode = Literal["keyword", "vector", "graph", "hybrid"]
MODES: tuple[str, ...] = ("keyword", "vector", "graph", "hybrid")
DEFAULT_WEIGHTS = {"vector": 0.35, "graph": 0.0, "keyword": 0.65}
RRF_K = 60
# How many candidates each mode contributes before fusion, relative to k.
CANDIDATE_FACTOR = 5
MIN_CANDIDATES = 50
# Chunks fetched per wanted document: documents have several chunks each.
CHUNKS_PER_DOC = 4
SEEDS_PER_MODE = 5
EDGE_WEIGHTS = {"cites": 1.0, "links_to": 0.8, "part_of": 0.8, "supersedes": 0.6}


class SearchError(ClaraError):
    """A search request that cannot run (unknown mode, bad weights); says what to change."""


class SearchRequest(BaseModel):
    query: str = ""
    mode: Mode = "hybrid"
    k: int = Field(default=10, ge=1, le=1000)
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    fusion: Literal["weighted", "rrf"] = "weighted"
    filters: DocumentFilters = Field(default_factory=DocumentFilters)
    seed_ids: list[str] = Field(default_factory=list)
    hops: int = Field(default=1, ge=1, le=4)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        out = dict(DEFAULT_WEIGHTS)
        for key, w in v.items():
            if key not in DEFAULT_WEIGHTS:
                raise ValueError(f"unknown weight {key!r}: use vector, graph, keyword")
            if w < 0:
                raise ValueError(f"weight {key} must not be negative")
            out[key] = float(w)
        if sum(out.values()) <= 0:
            raise ValueError("at least one weight must be above 0")
        return out


class SearchResult(BaseModel):
    rank: int
    doc_id: str
    title: str
    score: float
    scores: dict[str, float]  # normalised per-mode scores (0..1) that were fused
    raw_scores: dict[str, float]  # BM25F, cosine similarity, graph support
    snippet: str
    document_type: str | None = None
    domain: str | None = None
    date: dt.date | None = None
    related_via: str = ""  # for graph hits: "cites ← doc-id"


# Per-mode retrieval -----------------------------------------------------------------------


def keyword_candidates(
    engine: Engine, query: str, n: int, filters: DocumentFilters
) -> dict[str, float]:
    if not query.strip():
        return {}
    with engine.connect() as conn:
        return dict(keyword.keyword_search(conn, query, n, filters.sql()))


_QUERY_CACHE_SIZE = 256
_query_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_query_cache_lock = threading.Lock()


def _query_vector(emb: Any, query: str, timeout: float | None = None) -> np.ndarray:
    """The query's embedding (cached per model); EmbedderBusy after `timeout` seconds."""
    key = (emb.location, query)
    with _query_cache_lock:
        if key in _query_cache:
            _query_cache.move_to_end(key)
            return _query_cache[key]
    vec = emb.encode_query(query, timeout=timeout)
    with _query_cache_lock:
        _query_cache[key] = vec
        while len(_query_cache) > _QUERY_CACHE_SIZE:
            _query_cache.popitem(last=False)
    return vec


class VectorSkipped(Exception):
    """Vector search cannot answer now without waiting; the message says why."""


def vector_candidates(
    settings: Settings,
    query: str,
    n: int,
    filters: DocumentFilters,
    wait_s: float | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """Documents by their best chunk (max-pooling), and which chunk that was.

    With `wait_s`, waits at most that long for the embedding model (loading, or busy with
    a batch of pending chunks) and raises VectorSkipped instead of waiting longer.
    """
    from core.corpus.embedders import EmbedderBusy
    from core.corpus.vectors import vector_backend

    if not query.strip():
        return {}, {}
    backend = vector_backend(settings, wait_s)
    if backend.reason:
        raise VectorSkipped(backend.reason)
    store, emb = backend.store, backend.embedder
    if store.count() == 0:
        return {}, {}
    try:
        vec = _query_vector(emb, query, wait_s)
    except EmbedderBusy as err:
        raise VectorSkipped(str(err)) from None
    hits = store.query(vec, n * CHUNKS_PER_DOC, filters.chroma())
    best: dict[str, float] = {}
    best_chunk: dict[str, int] = {}
    for h in hits:
        if h.similarity > best.get(h.doc_id, -2.0):
            best[h.doc_id], best_chunk[h.doc_id] = h.similarity, h.chunk_index
    top = dict(sorted(best.items(), key=lambda kv: -kv[1])[:n])
    return top, {d: best_chunk[d] for d in top}


def _graph_seeds(per_mode: dict[str, dict[str, float]]) -> dict[str, float]:
    """Where graph expansion starts: each retriever's own best hits, weighted by their
    normalised score in the mode that found them (the better one where both did).

    Seeds taken from the weighted pre-fusion would all come from whichever mode has the
    largest default weight; on German text with the English default embedding model that is
    the weaker one, and the graph then spreads its mistakes.
    """
    seeds: dict[str, float] = {}
    for mode, scores in per_mode.items():
        # A seed's weight is a confidence, not a rank: BM25 has a true zero, so keyword
        # seeds are weighted by their share of the best score (min-max would all but zero
        # the second of two good hits); cosine similarity keeps its own scale.
        norm = _normalise(mode, scores) if mode == "vector" else _ratio(scores)
        for d, _s in sorted(scores.items(), key=lambda kv: -kv[1])[:SEEDS_PER_MODE]:
            seeds[d] = max(seeds.get(d, 0.0), norm[d])
    return seeds


def graph_support(
    engine: Engine, settings: Settings, seeds: dict[str, float], hops: int
) -> tuple[dict[str, float], dict[str, str]]:
    """Each neighbour's support: Σ over seeds of seed weight × edge weight / hops, divided
    for hubs by the square root of how many times the mean degree their degree is.

    Without the degree term a document related to nearly everything (a fee schedule every
    statute cites) is supported by whatever the seeds are and tops every graph search. The
    square root is the symmetric normalisation of graph propagation; measured against the
    mean degree it leaves ordinary documents alone and only damps real hubs.
    """
    store = query_store(engine, settings)
    support: dict[str, float] = defaultdict(float)
    via: dict[str, str] = {}
    for seed, weight in seeds.items():
        for nb in store.neighbours([seed], hops=hops, limit=100):
            support[nb.doc_id] += weight * EDGE_WEIGHTS.get(nb.via, 0.5) / nb.hops
            if nb.doc_id not in via:
                via[nb.doc_id] = f"{nb.via} ↔ {seed}"
    records = get_graph_stores(engine, settings)[0]
    degree, mean = records.degrees(list(support)), max(1.0, records.mean_degree())
    return {d: s / math.sqrt(max(1.0, degree.get(d, 0) / mean)) for d, s in support.items()}, via


def _minmax(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    hi, lo = max(scores.values()), min(scores.values())
    if hi <= 0:
        return {d: 0.0 for d in scores}
    if hi - lo < 1e-12:
        return {d: 1.0 for d in scores}
    # Scores are compared against absent candidates (0), so the floor is below the lowest
    # candidate rather than at it: the weakest candidate still counts for something.
    floor = lo - (hi - lo) / max(1, len(scores))
    return {d: (s - floor) / (hi - floor) for d, s in scores.items()}


def _ratio(scores: dict[str, float]) -> dict[str, float]:
    hi = max(scores.values(), default=0.0)
    return (
        {d: max(0.0, s) / hi for d, s in scores.items()} if hi > 0 else dict.fromkeys(scores, 0.0)
    )


def _normalise(mode: str, scores: dict[str, float]) -> dict[str, float]:
    """BM25F scores only mean something relative to the query's other candidates: min-max.
    Cosine similarity is already on a fixed scale: stretching it would turn the best of many
    weak matches into a perfect one, so it is only clipped to 0..1. Graph support is divided
    by the best support."""
    if mode == "vector":
        return {d: min(1.0, max(0.0, s)) for d, s in scores.items()}
    if mode == "graph":  # support has a true zero (no support): a ratio scale
        return _ratio(scores)
    return _minmax(scores)


def _fuse(
    per_mode: dict[str, dict[str, float]], weights: dict[str, float], fusion: str
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    norm = {m: _normalise(m, s) for m, s in per_mode.items()}
    total = sum(weights.get(m, 0.0) for m in per_mode) or 1.0
    fused: dict[str, float] = defaultdict(float)
    for mode, scores in per_mode.items():
        w = weights.get(mode, 0.0) / total
        if w <= 0:
            continue
        if fusion == "rrf":
            ranked = sorted(scores.items(), key=lambda kv: -kv[1])
            for rank, (doc, _s) in enumerate(ranked, start=1):
                fused[doc] += w / (RRF_K + rank)
        else:
            for doc, s in norm[mode].items():
                fused[doc] += w * s
    return dict(fused), norm


# The search -------------------------------------------------------------------------------


class EmbeddingProgress(BaseModel):
    """How many chunks have vectors (done) of all chunks (total)."""

    done: int = 0
    total: int = 0

    @property
    def pending(self) -> int:
        return self.total - self.done


class SearchResponse(BaseModel):
    """A search's results and how they were made: the modes that answered, the modes left
    out with the reason (e.g. vectors still being computed), notes, embedding progress."""

    results: list[SearchResult]
    modes: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    embeddings: EmbeddingProgress = Field(default_factory=EmbeddingProgress)
    seconds: float = 0.0


def embedding_progress(engine: Engine) -> EmbeddingProgress:
    with engine.connect() as conn:
        total, pending = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.case((Chunk.embedded.is_(False), 1), else_=0)), 0),
            ).select_from(Chunk)
        ).one()
    return EmbeddingProgress(done=int(total) - int(pending), total=int(total))


# How long a search in the web app waits for the embedding model before it answers without
# vectors (keyword and graph) and says so.
PAGE_VECTOR_WAIT_S = 2.0


def search(
    engine: Engine,
    actor: Principal,
    request: SearchRequest | str,
    settings: Settings | None = None,
    **overrides: Any,
) -> list[SearchResult]:
    """Run one search; `request` may be a SearchRequest or the query text plus overrides.

    Loads the embedding model if need be; `search_response` answers at once without it."""
    return search_response(engine, actor, request, settings, **overrides).results


def search_response(
    engine: Engine,
    actor: Principal,
    request: SearchRequest | str,
    settings: Settings | None = None,
    *,
    vector_wait_s: float | None = None,
    **overrides: Any,
) -> SearchResponse:
    """Run one search and say how: which modes answered and which were skipped and why.

    `vector_wait_s`: the most seconds to wait for the embedding model (being loaded, or
    busy embedding pending chunks); past it the search answers with keyword and graph and
    reports vector as skipped. None waits (the CLI, which has nothing else to do).
    """
    require(actor, "corpus:search")
    started = time.perf_counter()
    settings = settings or get_settings()
    if isinstance(request, str):
        request = SearchRequest(query=request, **overrides)
    elif overrides:
        request = request.model_copy(update=overrides)
    req = request
    n = max(MIN_CANDIDATES, req.k * CANDIDATE_FACTOR)
    per_mode: dict[str, dict[str, float]] = {}
    best_chunk: dict[str, int] = {}
    via: dict[str, str] = {}
    w = req.weights
    skipped: dict[str, str] = {}
    notes: list[str] = []
    wants_vector = (
        req.mode == "vector"
        or (req.mode == "hybrid" and w["vector"] > 0)
        or (req.mode == "graph" and not req.seed_ids)
    )
    progress = embedding_progress(engine) if wants_vector else EmbeddingProgress()

    def vectors() -> None:
        nonlocal best_chunk
        if progress.total and progress.done == 0:
            skipped["vector"] = (
                f"vectors are still being computed (0 of {progress.total} chunks embedded)"
            )
            return
        try:
            per_mode["vector"], best_chunk = vector_candidates(
                settings, req.query, n, req.filters, vector_wait_s
            )
        except VectorSkipped as err:
            why = str(err)
            if progress.pending:
                why += (
                    f"; vectors are still being computed ({progress.done} of "
                    f"{progress.total} chunks embedded)"
                )
            skipped["vector"] = why
            return
        if progress.pending:
            notes.append(
                f"vectors are still being computed: {progress.done} of {progress.total} "
                "chunks embedded; documents without vectors are found by keyword and graph"
            )

    if req.mode in ("keyword", "hybrid") and (req.mode == "keyword" or w["keyword"] > 0):
        per_mode["keyword"] = keyword_candidates(engine, req.query, n, req.filters)
    if req.mode in ("vector", "hybrid") and (req.mode == "vector" or w["vector"] > 0):
        vectors()
    if req.mode == "graph" or (req.mode == "hybrid" and w["graph"] > 0):
        if req.seed_ids:
            seeds = {d: 1.0 for d in req.seed_ids}
        else:
            if req.mode == "graph":
                per_mode["keyword"] = keyword_candidates(engine, req.query, n, req.filters)
                vectors()
            seeds = _graph_seeds({m: per_mode[m] for m in ("keyword", "vector") if m in per_mode})
        support, via = graph_support(engine, settings, seeds, req.hops)
        # A seed supports itself as well as its neighbours (one step of a personalised
        # PageRank with the restart mass on the seeds): a hit that other hits cite rises
        # above both an isolated hit and a neighbour only one hit mentions.
        per_mode["graph"] = {
            d: support.get(d, 0.0) + seeds.get(d, 0.0) for d in set(support) | set(seeds)
        }
        if req.mode == "graph":
            per_mode = {"graph": per_mode["graph"]}

    if req.mode == "hybrid":
        fused, norm = _fuse(per_mode, w, req.fusion)
    else:
        only = per_mode.get(req.mode, {})
        fused, norm = dict(only), {req.mode: _normalise(req.mode, only)}
    ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    results = _materialise(engine, req, ranked, per_mode, norm, best_chunk, via)
    if req.mode == "graph" and "vector" in skipped:
        skipped["vector"] = "not used as graph seeds: " + skipped["vector"]
    seconds = time.perf_counter() - started
    observe_search(req.mode, seconds)
    return SearchResponse(
        results=results,
        modes=[m for m in ("keyword", "vector", "graph") if m in per_mode],
        skipped=skipped,
        notes=notes,
        embeddings=progress,
        seconds=round(seconds, 3),
    )


def _materialise(
    engine: Engine,
    req: SearchRequest,
    ranked: list[tuple[str, float]],
    per_mode: dict[str, dict[str, float]],
    norm: dict[str, dict[str, float]],
    best_chunk: dict[str, int],
    via: dict[str, str],
) -> list[SearchResult]:
    """Fetch the top documents (filters applied in SQL once more) and build results."""
    wanted = [d for d, _ in ranked[: req.k * 3]]
    if not wanted:
        return []
    with engine.connect() as conn:
        rows = {
            r[0]: r
            for r in conn.execute(
                sa.select(
                    Document.doc_id,
                    Document.title,
                    Document.text,
                    Document.document_type,
                    Document.domain,
                    Document.date,
                ).where(Document.doc_id.in_(wanted), *req.filters.sql())
            )
        }
        chunk_text = {}
        pairs = [(d, best_chunk[d]) for d in wanted if d in best_chunk and d in rows]
        if pairs:
            conds = [sa.and_(Chunk.doc_id == d, Chunk.chunk_index == i) for d, i in pairs]
            for doc_id, text in conn.execute(
                sa.select(Chunk.doc_id, Chunk.text).where(sa.or_(*conds))
            ):
                chunk_text[doc_id] = text
    terms = query_terms(req.query)
    results: list[SearchResult] = []
    for doc_id, score in ranked:
        row = rows.get(doc_id)
        if row is None:
            continue
        kw_hit = doc_id in per_mode.get("keyword", {})
        base = chunk_text.get(doc_id) if (not kw_hit and doc_id in chunk_text) else row[2]
        results.append(
            SearchResult(
                rank=len(results) + 1,
                doc_id=doc_id,
                title=row[1],
                score=round(score, 6),
                scores={m: round(norm.get(m, {}).get(doc_id, 0.0), 4) for m in per_mode},
                raw_scores={m: round(per_mode[m].get(doc_id, 0.0), 6) for m in per_mode},
                snippet=snippet(base or "", terms),
                document_type=row[3],
                domain=row[4],
                date=row[5],
                related_via=via.get(doc_id, ""),
            )
        )
        if len(results) >= req.k:
            break
    return results


# Saved searches ---------------------------------------------------------------------------


class SavedSearchView(BaseModel):
    id: int
    name: str
    request: SearchRequest
    created_by: str
    created_at: dt.datetime


class SavedSearchNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no saved search named {name!r}; `clara corpus searches` lists them")


def save_search(
    engine: Engine, actor: Principal, name: str, request: SearchRequest
) -> SavedSearchView:
    """Store (or replace) a named search: query, mode, weights, filters, k."""
    name = name.strip()
    with audited(engine, actor, "corpus.save_search", target=name):
        require(actor, "corpus:search")
        if not 1 <= len(name) <= 128:
            raise SearchError("a saved search needs a name of 1-128 characters")
        from core.db import writing

        with writing(engine) as s:
            row = s.scalar(sa.select(SavedSearch).where(SavedSearch.name == name))
            if row is None:
                row = SavedSearch(name=name, created_by=actor.username)
                s.add(row)
            row.query, row.mode, row.k = request.query, request.mode, request.k
            row.weights = request.weights
            row.filters = request.filters.model_dump(mode="json")
            row.options = {
                "fusion": request.fusion,
                "seed_ids": request.seed_ids,
                "hops": request.hops,
            }
            s.flush()
            return _saved_view(row)


def _saved_view(row: SavedSearch) -> SavedSearchView:
    opts = row.options or {}
    req = SearchRequest(
        query=row.query,
        mode=row.mode,
        k=row.k,
        weights=row.weights or {},
        filters=DocumentFilters(**(row.filters or {})),
        fusion=opts.get("fusion", "weighted"),
        seed_ids=opts.get("seed_ids", []),
        hops=opts.get("hops", 1),
    )
    return SavedSearchView(
        id=row.id, name=row.name, request=req, created_by=row.created_by, created_at=row.created_at
    )


def list_saved_searches(engine: Engine, actor: Principal) -> list[SavedSearchView]:
    require(actor, "corpus:search")
    from core.db import reading

    with reading(engine) as s:
        return [
            _saved_view(r) for r in s.scalars(sa.select(SavedSearch).order_by(SavedSearch.name))
        ]


def get_saved_search(engine: Engine, actor: Principal, name: str) -> SavedSearchView:
    require(actor, "corpus:search")
    from core.db import reading

    with reading(engine) as s:
        row = s.scalar(sa.select(SavedSearch).where(SavedSearch.name == name))
        if row is None:
            raise SavedSearchNotFound(name)
        return _saved_view(row)


def run_saved_search(
    engine: Engine,
    actor: Principal,
    name: str,
    k: int | None = None,
    settings: Settings | None = None,
) -> list[SearchResult]:
    saved = get_saved_search(engine, actor, name)
    req = saved.request if k is None else saved.request.model_copy(update={"k": k})
    return search(engine, actor, req, settings)


def delete_saved_search(engine: Engine, actor: Principal, name: str) -> None:
    with audited(engine, actor, "corpus.delete_search", target=name):
        require(actor, "corpus:search")
        from core.db import writing

        with writing(engine) as s:
            row = s.scalar(sa.select(SavedSearch).where(SavedSearch.name == name))
            if row is None:
                raise SavedSearchNotFound(name)
            s.delete(row)
