"""Corpus tables: documents (latest revision), revision history, chunks, edges, saved searches.

The keyword index (postings tables corpus_terms and corpus_term_docs) is created by the
migrations and maintained only through core.corpus.keyword.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db.base import Base, JSONType, UTCDateTime, utcnow


class Document(Base):
    __tablename__ = "corpus_documents"

    # Integer key: the keyword postings refer to it.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    doc_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    revision: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    document_type: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    domain: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    date: Mapped[date | None] = mapped_column(Date, nullable=True, index=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    language: Mapped[str] = mapped_column(String(16), nullable=False, default="de")


class DocumentRevision(Base):
    """One row per stored revision (the text itself is kept only for the latest)."""

    __tablename__ = "corpus_revisions"
    __table_args__ = (UniqueConstraint("doc_id", "revision", name="uq_corpus_revisions_doc_rev"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    doc_id: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class Chunk(Base):
    __tablename__ = "corpus_chunks"
    __table_args__ = (
        Index("ix_corpus_chunks_doc", "doc_id", "chunk_index"),
        Index("ix_corpus_chunks_pending", "embedded"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    doc_id: Mapped[str] = mapped_column(
        ForeignKey("corpus_documents.doc_id", ondelete="CASCADE"), nullable=False
    )
    revision: Mapped[int] = mapped_column(Integer, nullable=False)
    chunk_index: Mapped[int] = mapped_column(Integer, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    start_char: Mapped[int] = mapped_column(Integer, nullable=False)
    end_char: Mapped[int] = mapped_column(Integer, nullable=False)
    token_count: Mapped[int] = mapped_column(Integer, nullable=False)
    embedded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Edge(Base):
    """A typed relation. `dst` may name a document not ingested (yet): queries join it."""

    __tablename__ = "corpus_edges"
    __table_args__ = (
        UniqueConstraint("src", "dst", "type", name="uq_corpus_edges_src_dst_type"),
        Index("ix_corpus_edges_dst", "dst"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    src: Mapped[str] = mapped_column(
        ForeignKey("corpus_documents.doc_id", ondelete="CASCADE"), nullable=False
    )
    dst: Mapped[str] = mapped_column(String(255), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    origin: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    evidence: Mapped[str] = mapped_column(Text, nullable=False, default="")


class LinkRef(Base):
    """A declared link whose target is not in the corpus (yet), kept as written.

    Links are resolved to document ids at ingest (core.corpus.linking.resolve_links); one
    that names no document stays here with the key it is matched by, and becomes an `Edge`
    at the ingest that brings its target.
    """

    __tablename__ = "corpus_link_refs"
    __table_args__ = (
        UniqueConstraint("src", "ref", "type", name="uq_corpus_link_refs_src_ref_type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    src: Mapped[str] = mapped_column(
        ForeignKey("corpus_documents.doc_id", ondelete="CASCADE"), nullable=False
    )
    ref: Mapped[str] = mapped_column(String(500), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    origin: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    link_key: Mapped[str] = mapped_column(String(16), nullable=False, default="auto")


class SavedSearch(Base):
    __tablename__ = "corpus_saved_searches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    query: Mapped[str] = mapped_column(Text, nullable=False, default="")
    mode: Mapped[str] = mapped_column(String(16), nullable=False, default="hybrid")
    k: Mapped[int] = mapped_column(Integer, nullable=False, default=20)
    weights: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    filters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
