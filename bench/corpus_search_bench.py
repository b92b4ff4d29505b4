"""Search latency with 20,000 synthetic German documents in the embedded default
(SQLite + embedded Chroma + relational graph) or on PostgreSQL (--database-url).

Usage: .venv/bin/python bench/corpus_search_bench.py [--docs 20000] [--chars 700]
       [--data-dir DIR] [--queries 200] [--database-url URL] [--modes keyword,graph]
With --data-dir an already built corpus is reused; otherwise a temporary one is built.
Reports p50/p95/max per mode; targets: keyword p95 < 30 ms (SQLite), < 50 ms and within 2x
of SQLite (PostgreSQL), hybrid p95 < 150 ms. Without vector or hybrid in --modes nothing is
embedded. --explain prints the PostgreSQL plan (EXPLAIN ANALYZE) of the first keyword query.

--vectors model embeds every chunk with the model (`embed_pending`; hours on two busy CPU
cores for 20k documents). --vectors sentence-mean (default) embeds each distinct sample
sentence once with the same model and gives every chunk the normalised mean of the
vectors of the sentences it consists of. Search latency depends on the number and size of
vectors in the HNSW index, not on how they were computed, and the query is still embedded
by the real model at search time, so the latency figures hold for model-computed vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def sentence_mean_vectors(st) -> int:
    """Fill the real Chroma store for all pending chunks (see the module docstring)."""
    import re

    import numpy as np
    import sqlalchemy as sa

    from bench.corpus_synth import sentences
    from core.corpus.embedders import get_embedder
    from core.corpus.embedding import _pending_batches, chunk_metadata
    from core.corpus.models import Chunk
    from core.corpus.vectors import get_vector_store

    pool = sorted(set(sentences()))
    emb = get_embedder(st.settings).encode(pool)
    vec = {s: emb[i] for i, s in enumerate(pool)}
    splitter = re.compile(r"(?<=[.!?])\s+")
    store = get_vector_store(st.settings)
    done = 0
    # The same pending-chunk query as real embedding, so the bench fills what ingest left.
    for rows in _pending_batches(st.engine, 2000):
        vectors = []
        for r in rows:
            parts = [vec[p] for p in splitter.split(r[3]) if p in vec] or [emb[r[0] % len(pool)]]
            v = np.mean(parts, axis=0)
            vectors.append(v / np.linalg.norm(v))
        store.upsert(
            [str(r[0]) for r in rows],
            np.stack(vectors),
            [chunk_metadata(r[1], r[2], r[4], r[5], r[6], r[7]) for r in rows],
        )
        with st.engine.begin() as conn:
            conn.execute(
                sa.update(Chunk).where(Chunk.id.in_([r[0] for r in rows])).values(embedded=True)
            )
        done += len(rows)
    return done


def explain_keyword(engine, query: str) -> None:
    """Print how the database runs one keyword query (PostgreSQL: EXPLAIN ANALYZE)."""
    import sqlalchemy as sa

    from core.corpus import keyword

    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            keyword.keyword_search(conn, query, 10)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = captured[-1]
    prefix = (
        "EXPLAIN (ANALYZE, BUFFERS) "
        if engine.dialect.name == "postgresql"
        else "EXPLAIN QUERY PLAN "
    )
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection.cursor()
        raw.execute(prefix + statement, parameters)
        print(f"plan of the ranking statement for {query!r}:")
        for row in raw.fetchall():
            print("   ", " | ".join(str(c) for c in row))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--chars", type=int, default=700)
    ap.add_argument("--data-dir")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--vectors", choices=["model", "sentence-mean"], default="sentence-mean")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--database-url", help="a PostgreSQL database to build the corpus in")
    ap.add_argument("--modes", default="keyword,vector,graph,hybrid,hybrid+filters")
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.database_url:
        os.environ["CLARA_DATABASE_URL"] = args.database_url
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="clara-search-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    os.environ["CLARA_DATA_DIR"] = str(data)

    from bench.corpus_synth import queries, write_jsonl
    from core.config import get_settings
    from core.corpus.documents import corpus_stats
    from core.corpus.embedding import embed_pending
    from core.corpus.ingest import IngestOptions, ingest_paths
    from core.corpus.search import search
    from core.permissions import SYSTEM
    from core.system import prepare

    st = prepare(get_settings())
    stats = corpus_stats(st.engine, SYSTEM)
    build = {}
    if stats["documents"] < args.docs:
        src = write_jsonl(data / "synthetic.jsonl", args.docs, args.chars)
        t0 = time.perf_counter()
        report = ingest_paths(st.engine, SYSTEM, [src], IngestOptions(embed=False), st.settings)
        build["ingest_s"] = round(time.perf_counter() - t0, 1)
        build["added"] = report.added
    needs_vectors = any(m.startswith(("vector", "hybrid")) for m in modes)
    if needs_vectors and corpus_stats(st.engine, SYSTEM)["pending_embeddings"]:
        t0 = time.perf_counter()

        def progress(stage, done, total, detail):
            if done % 2048 < 256:
                print(f"  embedded {done}/{total}", file=sys.stderr, flush=True)

        if args.vectors == "model":
            n = embed_pending(st.engine, SYSTEM, st.settings, progress=progress)
        else:
            n = sentence_mean_vectors(st)
        build["embed_s"] = round(time.perf_counter() - t0, 1)
        build["embedded"] = n
    stats = corpus_stats(st.engine, SYSTEM)
    qs = queries(args.queries)
    # Warm up: model load, first Chroma query, SQLite page cache.
    for q in qs[:5]:
        search(st.engine, SYSTEM, q, st.settings, mode="hybrid" if needs_vectors else modes[0])
    out = {
        "documents": stats["documents"],
        "chunks": stats["chunks"],
        "edges": stats["edges"],
        "build": build,
        "modes": {},
    }
    from core.corpus.search import _query_cache

    if args.explain:
        explain_keyword(st.engine, qs[0])
    for mode in [m for m in ("keyword", "vector", "graph", "hybrid") if m in modes]:
        _query_cache.clear()  # every mode pays for embedding its queries
        times, cpu = [], []
        for q in qs:
            t0, c0 = time.perf_counter(), time.process_time()
            search(st.engine, SYSTEM, q, st.settings, mode=mode, k=10)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        out["modes"][mode] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(pct(times, 95), 1),
            "max_ms": round(max(times), 1),
            "cpu_p50_ms": round(statistics.median(cpu), 1),
            "cpu_p95_ms": round(pct(cpu, 95), 1),
        }
    # Hybrid with filters applied inside the stores.
    if "hybrid+filters" not in modes:
        modes = []
    _query_cache.clear()
    times, cpu = [], []
    for q in qs if modes else []:
        t0, c0 = time.perf_counter(), time.process_time()
        search(
            st.engine,
            SYSTEM,
            q,
            st.settings,
            mode="hybrid",
            k=10,
            filters={"domain": ["bauen", "umwelt"], "date_from": "2020-01-01"},
        )
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    if times:
        out["modes"]["hybrid+filters"] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(pct(times, 95), 1),
            "max_ms": round(max(times), 1),
            "cpu_p50_ms": round(statistics.median(cpu), 1),
            "cpu_p95_ms": round(pct(cpu, 95), 1),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"load average {os.getloadavg()}; {st.engine.dialect.name}")
    print(
        f"{out['documents']} documents, {out['chunks']} chunks, {out['edges']} edges; build {build}"
    )
    for mode, m in out["modes"].items():
        print(
            f"{mode:<15} p50 {m['p50_ms']:>7.1f} ms   p95 {m['p95_ms']:>7.1f} ms   "
            f"max {m['max_ms']:>7.1f} ms   CPU p50 {m['cpu_p50_ms']:>6.1f} ms   "
            f"CPU p95 {m['cpu_p95_ms']:>6.1f} ms"
        )


if __name__ == "__main__":
    main()
