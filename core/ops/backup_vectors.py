"""The vector index in a backup, exported and re-inserted through Chroma's client.

We do not copy the embedded Chroma folder: the processes that write it (embed jobs, ingest,
deletes) hold no lock we could take, and its index files are rewritten while they run, so a
copy taken then can be torn. Through the client every record comes whole (id, vector,
metadata). The same export covers a Chroma server, whose data is not under the data dir, and
it does not depend on Chroma's on-disk format, which changes between releases. Restore
inserts the records into whatever store the target is configured with (embedded or server)
and Chroma builds its index anew; the collection keeps the record of which embedding model
made the vectors (core.corpus.vectors.EMBEDDING_KEY).

Files: `collection.json` (count, dimension, embedding), `records.jsonl` (id, metadata and
document per line) and `embeddings.f32` (the vectors in the same order, little-endian
float32, `dimension` values each).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from itertools import islice
from pathlib import Path
from typing import IO, Any

from core.config import Settings
from core.errors import ClaraError

COLLECTION_FILE = "collection.json"
RECORDS_FILE = "records.jsonl"
VECTORS_FILE = "embeddings.f32"
PAGE = 1000

Progress = Callable[[str, int, int | None, str], None]
Opener = Callable[[str], AbstractContextManager[IO[bytes]]]


class VectorBackupError(ClaraError):
    """The vectors of a backup do not fit together (records and vectors disagree)."""


def store_kind(settings: Settings) -> str:
    return "server" if settings.chroma_url else "embedded"


def _embedded_exists(settings: Settings) -> bool:
    path = settings.effective_chroma_path
    return path.is_dir() and any(path.iterdir())


def _server_collection(settings: Settings):
    """The server's collection, or None; never creates it (a refused restore writes nothing)."""
    from chromadb.errors import NotFoundError

    from core.corpus.vectors import COLLECTION, server_client

    try:
        return server_client(settings.chroma_url or "").get_collection(
            COLLECTION, embedding_function=None
        )
    except NotFoundError:
        return None


def server_vector_count(settings: Settings) -> int:
    collection = _server_collection(settings)
    return collection.count() if collection is not None else 0


def export_vectors(settings: Settings, folder: Path, progress: Progress | None = None) -> dict:
    """Write the chunk collection into `folder`; returns the manifest's `vectors` section."""
    from core.corpus.vectors import COLLECTION, EMBEDDING_KEY

    section: dict[str, Any] = {"store": store_kind(settings), "collection": COLLECTION}
    if settings.chroma_url:
        collection = _server_collection(settings)
    elif _embedded_exists(settings):
        from core.corpus.vectors import get_vector_store

        collection = get_vector_store(settings).collection
    else:
        collection = None
    if collection is None:
        return {**section, "count": 0}
    folder.mkdir(parents=True, exist_ok=True)
    total = collection.count()
    count, dimension = _write_records(collection, folder, total, progress)
    section.update(
        count=count,
        dimension=dimension,
        embedding=(collection.metadata or {}).get(EMBEDDING_KEY),
    )
    (folder / COLLECTION_FILE).write_text(json.dumps(section, indent=2) + "\n")
    return section


def _write_records(collection, folder: Path, total: int, progress: Progress | None):
    import numpy as np

    count, dimension = 0, None
    with (
        (folder / RECORDS_FILE).open("w", encoding="utf-8") as records,
        (folder / VECTORS_FILE).open("wb") as vectors,
    ):
        while True:
            page = collection.get(
                include=["embeddings", "metadatas", "documents"], limit=PAGE, offset=count
            )
            if not page["ids"]:
                break
            matrix = np.asarray(page["embeddings"], dtype="<f4")
            dimension = int(matrix.shape[1])
            vectors.write(matrix.tobytes())
            for cid, meta, doc in zip(
                page["ids"], page["metadatas"], page["documents"], strict=True
            ):
                line = {"id": cid, "metadata": meta, "document": doc}
                records.write(json.dumps(line, ensure_ascii=False) + "\n")
            count += len(page["ids"])
            if progress:
                progress("vectors", count, max(total, count), "")
    return count, dimension


def import_vectors(
    settings: Settings, section: dict, open_file: Opener, progress: Progress | None = None
) -> Callable[[], None]:
    """Insert the backup's records into the target's store; returns what undoes it."""
    import shutil

    from core.corpus.vectors import ChromaVectorStore

    if not section.get("count"):
        return lambda: None
    path = settings.effective_chroma_path
    created = not settings.chroma_url and not path.exists()
    if settings.chroma_url:
        store = ChromaVectorStore.server(
            settings.chroma_url, section["collection"], section.get("embedding")
        )
    else:
        store = ChromaVectorStore.embedded(path, section["collection"], section.get("embedding"))
    inserted: list[str] = []

    def undo() -> None:
        if created:
            shutil.rmtree(path, ignore_errors=True)
            return
        for start in range(0, len(inserted), PAGE):
            store.delete_ids(inserted[start : start + PAGE])

    try:
        for ids, vectors, metas in _batches(section, open_file):
            store.upsert(ids, vectors, metas)
            inserted.extend(ids)
            if progress:
                progress("vectors", len(inserted), section["count"], "")
    except BaseException:
        undo()
        raise
    if len(inserted) != section["count"]:
        undo()
        raise VectorBackupError(
            f"{len(inserted)} vectors read, the backup lists {section['count']}"
        )
    return undo


def _batches(section: dict, open_file: Opener) -> Iterator[tuple[list, Any, list]]:
    import numpy as np

    width = 4 * int(section["dimension"])
    with open_file(RECORDS_FILE) as raw_records, open_file(VECTORS_FILE) as vectors:
        records = io.TextIOWrapper(raw_records, encoding="utf-8")
        while lines := list(islice(records, PAGE)):
            rows = [json.loads(line) for line in lines]
            block = vectors.read(width * len(rows))
            if len(block) != width * len(rows):
                raise VectorBackupError(f"{VECTORS_FILE} ends before {RECORDS_FILE}")
            matrix = np.frombuffer(block, dtype="<f4").reshape(len(rows), -1)
            yield [r["id"] for r in rows], matrix, [r["metadata"] for r in rows]
        records.detach()
