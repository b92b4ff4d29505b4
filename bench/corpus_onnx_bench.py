"""The int8 ONNX embedding backend against the full sentence-transformers model.

Usage: .venv/bin/python bench/corpus_onnx_bench.py [--rounds 3] [--json]

On the chunks of the sample corpus (examples/corpus ingested into a temporary data dir
without embeddings, so the chunks are exactly those ingest makes):
1. encode throughput (chunks/s) of both embedders through their `encode` (the call
   `embed_pending` makes), alternated torch / onnx in each round, with the load average;
2. cosine agreement per chunk between the two backends' vectors;
3. recall@10 against the full model: for the 48 questions of bench/data/search_questions.jsonl
   (question → chunk top 10, and → document top 10 by each document's best chunk, as the
   vector search ranks them), and chunk → chunk (each chunk's 10 nearest other chunks);
4. query latency of `encode_query` (one short text, as search embeds it).
The ONNX model is built first (the build time is reported) into the temporary data dir.
The issue's wish: at least 2x the throughput with recall@10 ≥ 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
QUESTIONS = ROOT / "bench" / "data" / "search_questions.jsonl"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def sample_chunks():
    import sqlalchemy as sa

    from core.config import get_settings
    from core.corpus.models import Chunk
    from core.corpus.sample import load_sample
    from core.permissions import SYSTEM
    from core.system import prepare

    os.environ["CLARA_DATA_DIR"] = tempfile.mkdtemp(prefix="clara-onnx-bench-")
    get_settings.cache_clear()
    st = prepare(get_settings())
    load_sample(st.engine, SYSTEM, st.settings, embed=False)
    with st.engine.connect() as conn:
        rows = conn.execute(sa.select(Chunk.doc_id, Chunk.text).order_by(Chunk.id)).all()
    return st.settings, [(r[0], r[1]) for r in rows]


def recall_at(ref: np.ndarray, got: np.ndarray, k: int, skip_self: bool = False) -> float:
    """Mean share of the reference top-k (by score rows) that the other top-k also has."""
    if skip_self:
        ref, got = ref.copy(), got.copy()
        np.fill_diagonal(ref, -np.inf)
        np.fill_diagonal(got, -np.inf)
    a, b = np.argsort(-ref, axis=1)[:, :k], np.argsort(-got, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def doc_scores(scores: np.ndarray, doc_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each document's best chunk score per question (the vector search's max-pooling)."""
    docs = sorted(set(doc_ids))
    index = {d: i for i, d in enumerate(docs)}
    out = np.full((scores.shape[0], len(docs)), -np.inf, np.float32)
    for j, d in enumerate(doc_ids):
        out[:, index[d]] = np.maximum(out[:, index[d]], scores[:, j])
    return out, docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    from core.artifacts import read_manifest
    from core.corpus.embedders import Embedder, model_location
    from core.corpus.onnx_embedder import OnnxEmbedder, ensure_onnx_model

    settings, chunks = sample_chunks()
    texts = [t for _d, t in chunks]
    doc_ids = [d for d, _t in chunks]
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()]

    t0 = time.perf_counter()
    folder = ensure_onnx_model(settings.model_copy(update={"embedding_backend": "onnx"}))
    build_s = time.perf_counter() - t0
    full = Embedder(model_location(settings))
    int8 = OnnxEmbedder(folder)
    models = {"torch": full, "onnx": int8}
    for m in models.values():
        m.encode(texts[:32])  # warm-up

    rates: dict[str, list[float]] = {"torch": [], "onnx": []}
    loads: list[str] = [load()]
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            vectors[name] = m.encode(texts)
            rates[name].append(len(texts) / (time.perf_counter() - t0))
        loads.append(load())

    latency: dict[str, float] = {}
    qvec: dict[str, np.ndarray] = {}
    for name, m in models.items():
        t0 = time.perf_counter()
        qvec[name] = np.stack([m.encode_query(q) for q in questions])
        latency[name] = (time.perf_counter() - t0) / len(questions) * 1000

    cos = (vectors["torch"] * vectors["onnx"]).sum(axis=1)
    qcos = (qvec["torch"] * qvec["onnx"]).sum(axis=1)
    q_ref, q_got = qvec["torch"] @ vectors["torch"].T, qvec["onnx"] @ vectors["onnx"].T
    d_ref, _ = doc_scores(q_ref, doc_ids)
    d_got, docs = doc_scores(q_got, doc_ids)
    c_ref = vectors["torch"] @ vectors["torch"].T
    c_got = vectors["onnx"] @ vectors["onnx"].T
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "chunks": len(texts),
        "documents": len(docs),
        "questions": len(questions),
        "rounds": args.rounds,
        "onnx_build_seconds": round(build_s, 1),
        "onnx_model_mb": round((folder / "model_int8.onnx").stat().st_size / 1e6, 1),
        "chunks_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "median_chunks_per_s": {k: round(v, 1) for k, v in med.items()},
        "speedup_median": round(med["onnx"] / med["torch"], 2),
        "speedup_per_round": [
            round(o / t, 2) for t, o in zip(rates["torch"], rates["onnx"], strict=True)
        ],
        "query_latency_ms": {k: round(v, 1) for k, v in latency.items()},
        "cosine_chunks": {
            "mean": round(float(cos.mean()), 4),
            "p5": round(float(np.percentile(cos, 5)), 4),
            "min": round(float(cos.min()), 4),
        },
        "cosine_questions": {
            "mean": round(float(qcos.mean()), 4),
            "min": round(float(qcos.min()), 4),
        },
        "recall_at_10": {
            "question_to_chunk": round(recall_at(q_ref, q_got, 10), 3),
            "question_to_document": round(recall_at(d_ref, d_got, 10), 3),
            "chunk_to_chunk": round(recall_at(c_ref, c_got, 10, skip_self=True), 3),
        },
        "load_average_1m_5m": loads,
        "machine": (
            f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
            f"{platform.python_version()}; torch {torch.__version__}, transformers "
            f"{transformers.__version__}, sentence-transformers "
            f"{sentence_transformers.__version__}, onnxruntime {onnxruntime.__version__}"
        ),
        "manifest": read_manifest(folder),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    r = out["recall_at_10"]
    print(
        f"{out['chunks']} chunks of {out['documents']} documents, {args.rounds} rounds; "
        f"load {' → '.join(loads)}\n"
        f"torch {out['chunks_per_s']['torch']} chunks/s, onnx int8 {out['chunks_per_s']['onnx']}"
        f" → speedup {out['speedup_median']}x (per round {out['speedup_per_round']})\n"
        f"cosine chunks mean {out['cosine_chunks']['mean']} p5 {out['cosine_chunks']['p5']} min "
        f"{out['cosine_chunks']['min']}; questions mean {out['cosine_questions']['mean']}\n"
        f"recall@10 question→chunk {r['question_to_chunk']}, question→document "
        f"{r['question_to_document']}, chunk→chunk {r['chunk_to_chunk']}\n"
        f"query latency torch {latency['torch']:.1f} ms, onnx {latency['onnx']:.1f} ms; "
        f"build {out['onnx_build_seconds']} s, model {out['onnx_model_mb']} MB\n{out['machine']}"
    )


if __name__ == "__main__":
    main()
