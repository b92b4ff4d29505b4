"""Ingestion throughput and memory, on synthetic ~2 KB German documents.

Usage: .venv/bin/python bench/corpus_ingest_bench.py [--docs 3000] [--embed-docs 120]
       [--rounds 2] [--json]

1. Without embeddings: documents/s for a JSONL file of --docs documents (target ≥ 300/s),
   and peak RSS for that file and for one twice as large (flat memory = streamed ingest).
2. With embeddings: chunks/s of `ingest_paths(..., embed=True)` against the raw
   sentence-transformers `encode` of exactly the same chunk texts, alternated in one run
   (target: ingest ≥ 90 % of raw encode).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


class PeakRSS:
    """Samples this process's RSS in a thread; `peak` in MB."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss / 1e6)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def fresh_settings():
    from core.config import get_settings
    from core.corpus.vectors import reset_vector_stores
    from core.db import dispose_engines
    from core.system import prepare

    os.environ["CLARA_DATA_DIR"] = tempfile.mkdtemp(prefix="clara-ingest-bench-")
    get_settings.cache_clear()
    dispose_engines()
    reset_vector_stores()
    return prepare(get_settings())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--embed-docs", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-plain", action="store_true", help="only the embedding comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from bench.corpus_synth import write_jsonl
    from core.corpus.chunking import Chunker, load_tokenizer
    from core.corpus.embedders import get_embedder, model_location
    from core.corpus.ingest import IngestOptions, ingest_paths
    from core.corpus.readers import read_file
    from core.permissions import SYSTEM

    tmp = Path(tempfile.mkdtemp(prefix="clara-ingest-src-"))
    out: dict = {"no_embeddings": {}, "with_embeddings": {}}

    # 1. Without embeddings, and memory at two file sizes.
    for n in () if args.skip_plain else (args.docs, args.docs * 2):
        src = write_jsonl(tmp / f"docs-{n}.jsonl", n, 2000, seed=n)
        st = fresh_settings()
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            report = ingest_paths(st.engine, SYSTEM, [src], IngestOptions(embed=False), st.settings)
            secs = time.perf_counter() - t0
        assert report.ok and report.added == n, report.problems()[:3]
        out["no_embeddings"][str(n)] = {
            "docs_per_s": round(n / secs, 1),
            "seconds": round(secs, 1),
            "chunks": report.pending_embeddings,
            "peak_rss_mb": round(rss.peak, 1),
            "file_mb": round(src.stat().st_size / 1e6, 1),
        }

    # 2. With embeddings vs raw encode of the same chunks.
    src = write_jsonl(tmp / "embed.jsonl", args.embed_docs, 2000, seed=99)
    st = fresh_settings()
    embedder = get_embedder(st.settings)
    chunker = Chunker(load_tokenizer(model_location(st.settings)))
    texts = [c.text for d in read_file(src) for c in chunker.split(d.text)]
    embedder.encode(texts[:32])  # warm-up
    raw, ours = [], []
    print(f"load average before the embedding rounds {os.getloadavg()}", file=sys.stderr)
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        embedder.model.encode(
            texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False
        )
        raw.append(len(texts) / (time.perf_counter() - t0))
        st = fresh_settings()
        t0 = time.perf_counter()
        report = ingest_paths(st.engine, SYSTEM, [src], IngestOptions(embed=True), st.settings)
        ours.append(report.embedded / (time.perf_counter() - t0))
        assert report.embedded == len(texts) and report.pending_embeddings == 0
    out["with_embeddings"] = {
        "documents": args.embed_docs,
        "chunks": len(texts),
        "raw_encode_chunks_per_s": [round(x, 1) for x in raw],
        "ingest_chunks_per_s": [round(x, 1) for x in ours],
        "ratio_median": round(statistics.median(ours) / statistics.median(raw), 3),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for n, m in out["no_embeddings"].items():
        print(
            f"no embeddings, {n} docs ({m['file_mb']} MB): {m['docs_per_s']} docs/s, "
            f"{m['chunks']} chunks, peak RSS {m['peak_rss_mb']} MB"
        )
    w = out["with_embeddings"]
    print(
        f"with embeddings, {w['documents']} docs / {w['chunks']} chunks: raw encode "
        f"{w['raw_encode_chunks_per_s']} chunks/s, ingest {w['ingest_chunks_per_s']} "
        f"chunks/s, ratio {w['ratio_median']}"
    )


if __name__ == "__main__":
    main()
