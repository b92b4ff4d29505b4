"""The vector store: chunk vectors in ChromaDB, embedded or server.

We always hand Chroma our own vectors: its default embedding function would download a
model at run time. Vectors of different models or backends are not comparable, so the
collection records which one filled it (`embedding_identity`) and refuses vectors and queries
of another with a message saying how to re-embed
(`core.corpus.embedding.reset_embeddings`, `clara corpus embed --all`). The embedding models
themselves are in `core.corpus.embedders`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import Settings
from core.corpus.embedders import (
    TORCH_BACKEND,
    EmbeddingUnavailable,
    TextEmbedder,
    embedding_identity,
    get_embedder,
    load_embedder_within,
)

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

COLLECTION = "clara_chunks"
# Collection metadata key naming the backend and model whose vectors the collection holds.
EMBEDDING_KEY = "clara_embedding"


class EmbeddingMismatch(EmbeddingUnavailable):
    """The vector store holds vectors of another embedding model or backend."""


@dataclass(frozen=True)
class VectorBackend:
    """What a vector query needs, or why it cannot run now (`reason`)."""

    embedder: TextEmbedder | None = None
    store: ChromaVectorStore | None = None
    reason: str = ""


def vector_backend(settings: Settings, wait_s: float | None = None) -> VectorBackend:
    """The loaded embedding model and vector store, waiting at most `wait_s` seconds.

    With `wait_s=None` they are loaded here if need be (the CLI). Otherwise a background
    thread loads them (once per process) and, if that takes longer than `wait_s`, the
    answer says so instead of blocking the caller (a search in the web app).
    """
    if wait_s is None:
        return VectorBackend(get_embedder(settings), get_vector_store(settings))
    emb, reason = load_embedder_within(settings, wait_s, then=get_vector_store)
    if emb is None:
        return VectorBackend(reason=reason)
    started = time.monotonic()
    with _store_lock:
        store = _stores.get(_store_key(settings, COLLECTION))
    if store is None:
        left = max(0.0, wait_s - (time.monotonic() - started))
        result: list[ChromaVectorStore] = []
        opener = threading.Thread(
            target=lambda: result.append(get_vector_store(settings)), daemon=True
        )
        opener.start()
        opener.join(left)
        if not result:
            return VectorBackend(emb, reason="the vector store is still opening")
        store = result[0]
    return VectorBackend(emb, store)


@dataclass(frozen=True)
class VectorHit:
    chunk_id: str
    doc_id: str
    chunk_index: int
    distance: float

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance  # cosine space


class VectorStore(Protocol):
    def upsert(
        self, ids: list[str], vectors: np.ndarray, metadatas: list[dict[str, Any]]
    ) -> None: ...
    def query(
        self, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[VectorHit]: ...
    def delete_documents(self, doc_ids: list[str]) -> None: ...
    def delete_ids(self, ids: list[str]) -> None: ...
    def count(self) -> int: ...
    def document_ids(self, doc_id: str) -> list[str]: ...


class ChromaVectorStore:
    """One Chroma collection of chunk vectors, with document fields as metadata filters.

    With `embedding` (an `embedding_identity`), the collection records it when it is first
    filled; upserts and queries by another identity raise EmbeddingMismatch. A collection
    from before the record existed was filled by the sentence-transformers backend.
    """

    def __init__(
        self,
        client,
        collection: str = COLLECTION,
        embedding: str | None = None,
    ) -> None:
        self.client = client
        self.embedding = embedding
        self.collection = client.get_or_create_collection(
            name=collection,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
        )

    def recorded_embedding(self, fresh: bool = False) -> str | None:
        """The identity recorded on the collection (None: not recorded yet)."""
        if fresh:
            self.collection = self.client.get_collection(
                self.collection.name, embedding_function=None
            )
        return (self.collection.metadata or {}).get(EMBEDDING_KEY)

    def record_embedding(self, identity: str) -> None:
        self.collection.modify(metadata={EMBEDDING_KEY: identity})
        self.collection = self.client.get_collection(self.collection.name, embedding_function=None)

    def check_embedding(self) -> None:
        """Raise EmbeddingMismatch unless the collection is empty or holds vectors of this
        store's embedding; an empty or pre-record torch collection is stamped with it.
        Read afresh each time (another process may have re-embedded): ~0.3 ms embedded."""
        if self.embedding is None:
            return
        recorded = self.recorded_embedding(fresh=True)
        if recorded is None:
            legacy = self.embedding.startswith(TORCH_BACKEND + ":")
            if legacy or self.collection.count() == 0:
                self.record_embedding(self.embedding)
                return
            recorded = f"{TORCH_BACKEND} (recorded before backends were tracked)"
        if recorded != self.embedding:
            raise EmbeddingMismatch(
                f"the vector store (collection {self.collection.name!r}) holds embeddings "
                f"made by {recorded}, but the configuration asks for {self.embedding} "
                "(CLARA_EMBEDDING_BACKEND / CLARA_EMBEDDING_MODEL). Vectors of different "
                "models or backends are not comparable: re-embed every chunk with `clara "
                "corpus embed --all`, or set the configuration back."
            )

    @classmethod
    def embedded(
        cls, path: Path, collection: str = COLLECTION, embedding: str | None = None
    ) -> ChromaVectorStore:
        return cls(embedded_client(path), collection, embedding)

    @classmethod
    def server(
        cls, url: str, collection: str = COLLECTION, embedding: str | None = None
    ) -> ChromaVectorStore:
        return cls(server_client(url), collection, embedding)

    def upsert(self, ids: list[str], vectors: np.ndarray, metadatas: list[dict[str, Any]]) -> None:
        if ids:
            self.check_embedding()
            self.collection.upsert(
                ids=ids, embeddings=np.asarray(vectors, dtype=np.float32), metadatas=metadatas
            )

    def query(
        self, vector: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        if k <= 0:
            return []
        self.check_embedding()
        res = self.collection.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=k,
            where=where or None,
            include=["metadatas", "distances"],
        )
        hits = []
        for cid, meta, dist in zip(
            res["ids"][0], res["metadatas"][0], res["distances"][0], strict=True
        ):
            hits.append(
                VectorHit(cid, str(meta["doc_id"]), int(meta.get("chunk_index", 0)), float(dist))
            )
        return hits

    def delete_documents(self, doc_ids: list[str]) -> None:
        if doc_ids:
            self.collection.delete(where={"doc_id": {"$in": list(doc_ids)}})

    def delete_ids(self, ids: list[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))

    def document_ids(self, doc_id: str) -> list[str]:
        return list(self.collection.get(where={"doc_id": doc_id}, include=[])["ids"])

    def count(self) -> int:
        return self.collection.count()

    def clear(self) -> int:
        """Delete every vector (the collection itself stays, so other processes' handles on
        it stay valid); returns how many were deleted."""
        deleted = 0
        while ids := self.collection.get(include=[], limit=5000)["ids"]:
            self.collection.delete(ids=ids)
            deleted += len(ids)
        return deleted


def embedded_client(path: Path):
    """A Chroma client of the store in `path` (created if missing)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(
        path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
    )


def server_client(url: str):
    """A Chroma client of the server at `url` (http://host:port or https://...)."""
    from urllib.parse import urlparse

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    u = urlparse(url)
    return chromadb.HttpClient(
        host=u.hostname or "127.0.0.1",
        port=u.port or (443 if u.scheme == "https" else 8000),
        ssl=u.scheme == "https",
        settings=ChromaSettings(anonymized_telemetry=False),
    )


_stores: dict[tuple[str, str, str], ChromaVectorStore] = {}
_store_lock = threading.Lock()


def _store_key(settings: Settings, collection: str) -> tuple[str, str, str]:
    identity = embedding_identity(settings)
    return (settings.chroma_url or str(settings.effective_chroma_path), collection, identity)


def get_vector_store(settings: Settings, collection: str = COLLECTION) -> ChromaVectorStore:
    """Chroma server when CLARA_CHROMA_URL is set, else the embedded store in the data dir;
    guarded against vectors of another embedding backend or model (EmbeddingMismatch)."""
    identity = embedding_identity(settings)
    key = _store_key(settings, collection)
    with _store_lock:
        store = _stores.get(key)
        if store is None:
            if settings.chroma_url:
                store = ChromaVectorStore.server(settings.chroma_url, collection, identity)
            else:
                store = ChromaVectorStore.embedded(
                    settings.effective_chroma_path, collection, identity
                )
            _stores[key] = store
        return store


def reset_vector_stores() -> None:
    """Forget cached clients (tests switch data dirs)."""
    with _store_lock:
        _stores.clear()


def date_number(value) -> int | None:
    """Dates as yyyymmdd integers: Chroma compares numbers, not date strings."""
    return int(value.strftime("%Y%m%d")) if value else None
