"""Reading the corpus: the views other areas build on (Datasets reads documents and chunks
through these names), paginated browsing and statistics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Engine

from core.corpus.models import Chunk, Document, DocumentRevision, Edge, LinkRef
from core.errors import NotFound
from core.permissions import Principal, require

if TYPE_CHECKING:  # pandas costs ~0.5 s to import; only the listing functions need it
    import pandas as pd

_BATCH = 200


class DocumentNotFound(NotFound):
    def __init__(self, doc_id: str) -> None:
        super().__init__(f"no document with id {doc_id!r}; `clara corpus search` lists ids")
        self.doc_id = doc_id


class DocumentView(BaseModel):
    model_config = ConfigDict(frozen=True)

    doc_id: str
    revision: int
    title: str
    text: str
    document_type: str | None
    domain: str | None
    date: dt.date | None
    metadata: dict[str, Any]
    source_path: str | None
    sha256: str
    ingested_at: dt.datetime


class ChunkView(BaseModel):
    model_config = ConfigDict(frozen=True)

    doc_id: str
    revision: int
    chunk_index: int
    text: str
    start_char: int
    end_char: int
    token_count: int


class DocumentFilters(BaseModel):
    """Filters applied inside the stores (SQL WHERE, Chroma where), never in Python."""

    document_type: list[str] = Field(default_factory=list)
    domain: list[str] = Field(default_factory=list)
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    doc_ids: list[str] = Field(default_factory=list)
    title_contains: str | None = None

    @field_validator("document_type", "domain", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if v is None or v == "":
            return []
        return [v] if isinstance(v, str) else v

    @classmethod
    def parse(cls, items: list[str]) -> DocumentFilters:
        """`key=value` strings (CLI --filter): document_type, domain, date_from, date_to, or
        any other key as a metadata equality."""
        data: dict[str, Any] = {"metadata": {}}
        for item in items:
            if "=" not in item:
                raise ValueError(f"filter {item!r}: write KEY=VALUE (e.g. domain=bauen)")
            key, value = (p.strip() for p in item.split("=", 1))
            if key in ("document_type", "type", "domain"):
                data.setdefault("document_type" if key == "type" else key, []).append(value)
            elif key in ("date_from", "date_to", "from", "to"):
                data["date_from" if key in ("date_from", "from") else "date_to"] = (
                    dt.date.fromisoformat(value)
                )
            else:
                data["metadata"][key] = value
        return cls(**data)

    def is_empty(self) -> bool:
        return not (
            self.document_type
            or self.domain
            or self.date_from
            or self.date_to
            or self.metadata
            or self.doc_ids
            or self.title_contains
        )

    def sql(self) -> list[sa.ColumnElement]:
        """Conditions on corpus_documents; every value is a bound parameter."""
        c: list[sa.ColumnElement] = []
        if self.document_type:
            c.append(Document.document_type.in_(self.document_type))
        if self.domain:
            c.append(Document.domain.in_(self.domain))
        if self.date_from:
            c.append(Document.date >= self.date_from)
        if self.date_to:
            c.append(Document.date <= self.date_to)
        for key, value in self.metadata.items():
            c.append(sa.cast(Document.metadata_[key].as_string(), sa.String) == str(value))
        if self.doc_ids:
            c.append(Document.doc_id.in_(self.doc_ids))
        if self.title_contains:
            c.append(Document.title.ilike(f"%{_escape_like(self.title_contains)}%", escape="\\"))
        return c

    def chroma(self) -> dict[str, Any] | None:
        """The same filters as a Chroma where-clause on the chunk metadata."""
        from core.corpus.vectors import date_number

        parts: list[dict[str, Any]] = []
        if self.document_type:
            parts.append({"document_type": {"$in": list(self.document_type)}})
        if self.domain:
            parts.append({"domain": {"$in": list(self.domain)}})
        if self.date_from:
            parts.append({"date": {"$gte": date_number(self.date_from)}})
        if self.date_to:
            parts.append({"date": {"$lte": date_number(self.date_to)}})
        for key, value in self.metadata.items():
            parts.append({f"m.{key}": {"$eq": str(value)}})
        if self.doc_ids:
            parts.append({"doc_id": {"$in": list(self.doc_ids)}})
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"$and": parts}


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _view(d: Document) -> DocumentView:
    return DocumentView(
        doc_id=d.doc_id,
        revision=d.revision,
        title=d.title,
        text=d.text,
        document_type=d.document_type,
        domain=d.domain,
        date=d.date,
        metadata=d.metadata_ or {},
        source_path=d.source_path,
        sha256=d.sha256,
        ingested_at=d.ingested_at,
    )


def get_document(engine: Engine, actor: Principal, doc_id: str) -> DocumentView:
    """The latest revision of one document; raises DocumentNotFound."""
    require(actor, "corpus:search")
    from core.db import reading

    with reading(engine) as s:
        d = s.scalar(sa.select(Document).where(Document.doc_id == doc_id))
        if d is None:
            raise DocumentNotFound(doc_id)
        return _view(d)


def iter_documents(engine: Engine, actor: Principal, doc_ids: list[str]) -> Iterator[DocumentView]:
    """Documents in the order given (unknown ids are skipped), read in batches."""
    require(actor, "corpus:search")
    from core.db import reading

    for i in range(0, len(doc_ids), _BATCH):
        part = doc_ids[i : i + _BATCH]
        with reading(engine) as s:
            found = {
                d.doc_id: _view(d)
                for d in s.scalars(sa.select(Document).where(Document.doc_id.in_(part)))
            }
        for doc_id in part:
            if doc_id in found:
                yield found[doc_id]


def iter_chunks(engine: Engine, actor: Principal, doc_ids: list[str]) -> Iterator[ChunkView]:
    """Chunks of the latest revisions, document by document in the order given."""
    require(actor, "corpus:search")
    for i in range(0, len(doc_ids), _BATCH):
        part = doc_ids[i : i + _BATCH]
        order = {d: n for n, d in enumerate(part)}
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    Chunk.doc_id,
                    Chunk.revision,
                    Chunk.chunk_index,
                    Chunk.text,
                    Chunk.start_char,
                    Chunk.end_char,
                    Chunk.token_count,
                ).where(Chunk.doc_id.in_(part))
            ).all()
        rows.sort(key=lambda r: (order[r[0]], r[2]))
        for r in rows:
            yield ChunkView(
                doc_id=r[0],
                revision=r[1],
                chunk_index=r[2],
                text=r[3],
                start_char=r[4],
                end_char=r[5],
                token_count=r[6],
            )


LIST_COLUMNS = [
    "doc_id",
    "title",
    "document_type",
    "domain",
    "date",
    "revision",
    "chars",
    "chunks",
    "ingested_at",
    "source_path",
]


def list_documents(
    engine: Engine,
    actor: Principal,
    offset: int = 0,
    limit: int = 50,
    filters: DocumentFilters | dict | None = None,
    order_by: str = "doc_id",
) -> tuple[pd.DataFrame, int]:
    """One page of documents (no text), filtered in SQL, and the total matching."""
    require(actor, "corpus:search")
    if isinstance(filters, dict):
        filters = DocumentFilters(**filters)
    conds = (filters or DocumentFilters()).sql()
    limit = max(1, min(int(limit), 1000))
    orders = {
        "doc_id": Document.doc_id,
        "date": Document.date.desc(),
        "ingested_at": Document.ingested_at.desc(),
        "title": Document.title,
    }
    n_chunks = (
        sa.select(sa.func.count())
        .where(Chunk.doc_id == Document.doc_id)
        .correlate(Document)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.count()).select_from(Document).where(*conds)
        ).scalar_one()
        rows = conn.execute(
            sa.select(
                Document.doc_id,
                Document.title,
                Document.document_type,
                Document.domain,
                Document.date,
                Document.revision,
                sa.func.length(Document.text),
                n_chunks,
                Document.ingested_at,
                Document.source_path,
            )
            .where(*conds)
            .order_by(orders.get(order_by, Document.doc_id), Document.doc_id)
            .offset(max(0, int(offset)))
            .limit(limit)
        ).all()
    import pandas as pd

    frame = pd.DataFrame([tuple(r) for r in rows], columns=LIST_COLUMNS)
    return frame, int(total)


def document_revisions(engine: Engine, actor: Principal, doc_id: str) -> pd.DataFrame:
    require(actor, "corpus:search")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                DocumentRevision.revision,
                DocumentRevision.sha256,
                DocumentRevision.source_path,
                DocumentRevision.ingested_at,
            )
            .where(DocumentRevision.doc_id == doc_id)
            .order_by(DocumentRevision.revision)
        ).all()
    import pandas as pd

    return pd.DataFrame(
        [tuple(r) for r in rows], columns=["revision", "sha256", "source_path", "ingested_at"]
    )


def facet_values(engine: Engine, actor: Principal) -> dict[str, list[str]]:
    """Distinct document types and domains (for filter widgets)."""
    require(actor, "corpus:search")
    with engine.connect() as conn:
        types = (
            conn.execute(
                sa.select(Document.document_type)
                .distinct()
                .where(Document.document_type.is_not(None))
            )
            .scalars()
            .all()
        )
        domains = (
            conn.execute(sa.select(Document.domain).distinct().where(Document.domain.is_not(None)))
            .scalars()
            .all()
        )
    return {"document_type": sorted(types), "domain": sorted(domains)}


def corpus_stats(engine: Engine, actor: Principal) -> dict[str, Any]:
    require(actor, "corpus:search")
    with engine.connect() as conn:

        def count(stmt) -> int:
            return int(conn.execute(stmt).scalar_one() or 0)

        docs = count(sa.select(sa.func.count()).select_from(Document))
        chunks = count(sa.select(sa.func.count()).select_from(Chunk))
        pending = count(
            sa.select(sa.func.count()).select_from(Chunk).where(Chunk.embedded.is_(False))
        )
        edges = count(
            sa.select(sa.func.count())
            .select_from(Edge)
            .where(Edge.dst.in_(sa.select(Document.doc_id)))
        )
        # declared links that name no document yet (they resolve when it is ingested)
        unresolved = count(sa.select(sa.func.count()).select_from(LinkRef))
        chars = count(sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(Document.text)), 0)))
        by_type = dict(
            conn.execute(
                sa.select(Document.document_type, sa.func.count()).group_by(Document.document_type)
            ).all()
        )
        by_domain = dict(
            conn.execute(
                sa.select(Document.domain, sa.func.count()).group_by(Document.domain)
            ).all()
        )
        edge_types = dict(
            conn.execute(
                sa.select(Edge.type, sa.func.count())
                .where(Edge.dst.in_(sa.select(Document.doc_id)))
                .group_by(Edge.type)
            ).all()
        )
    return {
        "documents": docs,
        "chunks": chunks,
        "embedded_chunks": chunks - pending,
        "pending_embeddings": pending,
        "edges": edges,
        "unresolved_links": unresolved,
        "characters": chars,
        "by_document_type": {str(k): v for k, v in by_type.items()},
        "by_domain": {str(k): v for k, v in by_domain.items()},
        "by_edge_type": edge_types,
    }


def related_documents(
    engine: Engine,
    actor: Principal,
    doc_id: str,
    settings=None,
    hops: int = 1,
) -> dict[str, Any]:
    """Nodes and edges around one document, for the page's small graph."""
    require(actor, "corpus:search")
    from core.config import get_settings
    from core.corpus.graph import query_store

    store = query_store(engine, settings or get_settings())
    neighbours = store.neighbours([doc_id], hops=hops, limit=60)
    ids = [doc_id] + [n.doc_id for n in neighbours]
    with engine.connect() as conn:
        titles = dict(
            conn.execute(
                sa.select(Document.doc_id, Document.title).where(Document.doc_id.in_(ids))
            ).all()
        )
        edges = conn.execute(
            sa.select(Edge.src, Edge.dst, Edge.type, Edge.origin, Edge.evidence).where(
                Edge.src.in_(ids), Edge.dst.in_(ids)
            )
        ).all()
    return {
        "center": doc_id,
        "nodes": [
            {
                "doc_id": i,
                "title": titles.get(i, i),
                "hops": 0 if i == doc_id else next(n.hops for n in neighbours if n.doc_id == i),
            }
            for i in ids
        ],
        "edges": [
            {"src": e[0], "dst": e[1], "type": e[2], "origin": e[3], "evidence": e[4]}
            for e in edges
        ],
    }
