"""Search latency with 20,000 synthetic German documents in the embedded default
(SQLite FTS5 + embedded Chroma + relational graph).

Usage: .venv/bin/python bench/corpus_search_bench.py [--docs 20000] [--chars 700]
       [--data-dir DIR] [--queries 200]
With --data-dir an already built corpus is reused (embedding 20k documents on two CPU cores
takes a while); otherwise a temporary one is built. Reports p50/p95/max per mode; targets:
keyword p95 < 30 ms, hybrid p95 < 150 ms.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--chars", type=int, default=700)
    ap.add_argument("--data-dir")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="clara-search-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    os.environ["CLARA_DATA_DIR"] = str(data)

    from bench.corpus_synth import queries, write_jsonl
    from core.auth import SYSTEM
    from core.config import get_settings
    from core.corpus.documents import corpus_stats
    from core.corpus.ingest import IngestOptions, embed_pending, ingest_paths
    from core.corpus.search import search
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
    if corpus_stats(st.engine, SYSTEM)["pending_embeddings"]:
        t0 = time.perf_counter()

        def progress(stage, done, total, detail):  # noqa: ANN001
            if done % 2048 < 256:
                print(f"  embedded {done}/{total}", file=sys.stderr, flush=True)

        n = embed_pending(st.engine, SYSTEM, st.settings, progress=progress)
        build["embed_s"] = round(time.perf_counter() - t0, 1)
        build["embedded"] = n
    stats = corpus_stats(st.engine, SYSTEM)
    qs = queries(args.queries)
    # Warm up: model load, first Chroma query, SQLite page cache.
    for q in qs[:5]:
        search(st.engine, SYSTEM, q, st.settings, mode="hybrid", k=10)
    out = {
        "documents": stats["documents"],
        "chunks": stats["chunks"],
        "edges": stats["edges"],
        "build": build,
        "modes": {},
    }
    for mode in ("keyword", "vector", "graph", "hybrid"):
        times = []
        for q in qs:
            t0 = time.perf_counter()
            search(st.engine, SYSTEM, q, st.settings, mode=mode, k=10)
            times.append((time.perf_counter() - t0) * 1000)
        out["modes"][mode] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(pct(times, 95), 1),
            "max_ms": round(max(times), 1),
        }
    # Hybrid with filters applied inside the stores.
    times = []
    for q in qs:
        t0 = time.perf_counter()
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
    out["modes"]["hybrid+filters"] = {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(pct(times, 95), 1),
        "max_ms": round(max(times), 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{out['documents']} documents, {out['chunks']} chunks, {out['edges']} edges; build {build}"
    )
    for mode, m in out["modes"].items():
        print(
            f"{mode:<15} p50 {m['p50_ms']:>7.1f} ms   p95 {m['p95_ms']:>7.1f} ms   "
            f"max {m['max_ms']:>7.1f} ms"
        )


if __name__ == "__main__":
    main()
