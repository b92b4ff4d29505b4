"""Search quality on the sample corpus: hit@1, hit@5 and MRR@10 per mode.

Usage: .venv/bin/python bench/corpus_search_quality.py [--json] [--database-url URL]
Ingests examples/corpus into a fresh temporary data dir (embedded SQLite by default),
computes embeddings, then asks every question of bench/data/search_questions.jsonl. A hit
is any document listed in the question's `relevant` ids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

CONFIGS = {
    "keyword": {"mode": "keyword"},
    "vector": {"mode": "vector"},
    "graph": {"mode": "graph"},
    "hybrid": {"mode": "hybrid"},
    "hybrid-rrf": {"mode": "hybrid", "fusion": "rrf"},
}


def evaluate(engine, actor, settings, questions, config) -> dict:
    from core.corpus.search import search

    hit1 = hit5 = 0
    rr = 0.0
    for q in questions:
        results = search(engine, actor, q["question"], settings, k=10, **config)
        ids = [r.doc_id for r in results]
        relevant = set(q["relevant"])
        first = next((i for i, d in enumerate(ids) if d in relevant), None)
        if first is not None:
            hit1 += first == 0
            hit5 += first < 5
            rr += 1.0 / (first + 1)
    n = len(questions)
    return {"hit@1": hit1 / n, "hit@5": hit5 / n, "mrr@10": rr / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--database-url")
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="clara-quality-")
    os.environ["CLARA_DATA_DIR"] = data
    if args.database_url:
        os.environ["CLARA_DATABASE_URL"] = args.database_url
    from core.config import get_settings
    from core.corpus.sample import load_sample
    from core.permissions import SYSTEM
    from core.system import prepare

    st = prepare(get_settings())
    t0 = time.perf_counter()
    report = load_sample(st.engine, SYSTEM, st.settings, embed=True)
    ingest_s = time.perf_counter() - t0
    questions = [
        json.loads(line)
        for line in (ROOT / "bench/data/search_questions.jsonl").read_text().splitlines()
        if line
    ]
    out = {
        "questions": len(questions),
        "documents": report.added + report.unchanged,
        "ingest_seconds": round(ingest_s, 1),
        "modes": {},
    }
    for name, cfg in CONFIGS.items():
        out["modes"][name] = {
            k: round(v, 3)
            for k, v in evaluate(st.engine, SYSTEM, st.settings, questions, cfg).items()
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{out['questions']} questions, {out['documents']} documents "
        f"(ingest incl. embeddings {out['ingest_seconds']} s)"
    )
    print(f"{'mode':<12} {'hit@1':>6} {'hit@5':>6} {'MRR@10':>7}")
    for name, m in out["modes"].items():
        print(f"{name:<12} {m['hit@1']:>6.3f} {m['hit@5']:>6.3f} {m['mrr@10']:>7.3f}")


if __name__ == "__main__":
    main()
