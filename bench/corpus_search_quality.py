"""Search quality: hit@1, hit@5 and MRR@10 of every search mode, on every question set and
both database engines, next to a plain BM25 and a plain dense baseline from the same run.

Usage:
    .venv/bin/python bench/corpus_search_quality.py [--sets dev,manpages-de,debian-faq-de]
        [--engines sqlite,postgresql] [--modes keyword,vector,graph,hybrid,hybrid-rrf]
        [--database-url URL] [--skip-embeddings] [--json] [--out FILE]

Sets (bench/data/heldout/README.md says where each comes from):
- dev: the sample corpus (examples/corpus) with bench/data/search_questions.jsonl; written
  by the team, tuned against; the development set.
- manpages-de, debian-faq-de: held-out corpora the team did not write
  (bench/data/heldout/<set>/corpus.jsonl.gz, questions.jsonl, SOURCE.md).

For each set and engine the set is ingested into a fresh temporary data dir through the
product's own ingest (`load_sample` for dev; `ingest_paths` of the decompressed JSONL for
the others, `see_also` as links), then its chunks are embedded by the product
(`embed_pending`), and each question is asked through `core.corpus.search.search` (k=10).
PostgreSQL: a fresh database is created on the server of --database-url (default
postgresql+psycopg://postgres@127.0.0.1:5432/) and dropped afterwards. Vectors live in the
data dir's Chroma, so they are computed again for every engine (the product has no honest
way to share them between two databases); --engines sqlite halves the run.

Baselines, computed once per set (they do not use the engine): `bm25` is rank_bm25's
BM25Okapi over lowercased \\w+ tokens of title + text of the documents as the product
stored them; `dense` is the same all-MiniLM-L6-v2 model encoding each whole document
(title + text, truncated by the model at 256 word pieces), ranked by cosine.
Keyword latency: every question asked in keyword mode three times after one warm-up round,
p50 / p95 of the wall time of `search`.

--skip-embeddings: no vectors; keyword and graph (seeded by keyword hits only) and bm25.
A hit is any document listed in the question's `relevant` ids.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

HELDOUT = ROOT / "bench" / "data" / "heldout"
DEV_QUESTIONS = ROOT / "bench" / "data" / "search_questions.jsonl"
SETS = ("dev", "manpages-de", "debian-faq-de")
ENGINES = ("sqlite", "postgresql")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/"
K = 10
LATENCY_ROUNDS = 3

CONFIGS = {
    "keyword": {"mode": "keyword"},
    "vector": {"mode": "vector"},
    "graph": {"mode": "graph"},
    "hybrid": {"mode": "hybrid"},
    "hybrid-rrf": {"mode": "hybrid", "fusion": "rrf"},
}
NEEDS_VECTORS = {"vector", "hybrid", "hybrid-rrf"}
BASELINES = ("bm25", "dense")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_questions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def questions_of(name: str) -> list[dict]:
    return read_questions(DEV_QUESTIONS if name == "dev" else HELDOUT / name / "questions.jsonl")


def score(ranked: list[list[str]], questions: list[dict]) -> dict[str, float]:
    """hit@1, hit@5, MRR@10 of ranked doc-id lists (one per question)."""
    hit1 = hit5 = 0
    rr = 0.0
    for ids, q in zip(ranked, questions, strict=True):
        relevant = set(q["relevant"])
        first = next((i for i, d in enumerate(ids[:K]) if d in relevant), None)
        if first is not None:
            hit1 += first == 0
            hit5 += first < 5
            rr += 1.0 / (first + 1)
    n = len(questions)
    return {"hit@1": round(hit1 / n, 3), "hit@5": round(hit5 / n, 3), "mrr@10": round(rr / n, 3)}


# The product ---------------------------------------------------------------------------------


def ingest_set(name: str, engine, settings, work: Path):
    """Ingest the set through the product (no embeddings yet); returns the IngestReport."""
    from core.corpus.ingest import IngestOptions, ingest_paths
    from core.corpus.sample import load_sample
    from core.permissions import SYSTEM

    if name == "dev":
        return load_sample(engine, SYSTEM, settings, embed=False)
    src = work / f"{name}.jsonl"
    if not src.exists():
        src.write_bytes(gzip.decompress((HELDOUT / name / "corpus.jsonl.gz").read_bytes()))
    return ingest_paths(engine, SYSTEM, [src], IngestOptions(embed=False), settings)


def corpus_counts(engine) -> dict[str, int]:
    import sqlalchemy as sa

    from core.corpus.models import Chunk, Document, Edge, LinkRef

    with engine.connect() as conn:

        def count(model) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()

        return {
            "documents": count(Document),
            "chunks": count(Chunk),
            "edges": count(Edge),
            "unresolved_links": count(LinkRef),
        }


def stored_documents(engine) -> list[tuple[str, str, str]]:
    import sqlalchemy as sa

    from core.corpus.models import Document

    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(Document.doc_id, Document.title, Document.text).order_by(Document.doc_id)
            )
        ]


def product_ranking(engine, settings, questions: list[dict], config: dict) -> list[list[str]]:
    from core.corpus.search import search
    from core.permissions import SYSTEM

    return [
        [r.doc_id for r in search(engine, SYSTEM, q["question"], settings, k=K, **config)]
        for q in questions
    ]


def keyword_latency(engine, settings, questions: list[dict]) -> dict[str, float]:
    from core.corpus.search import search
    from core.permissions import SYSTEM

    for q in questions:  # warm-up: caches, prepared statements
        search(engine, SYSTEM, q["question"], settings, k=K, mode="keyword")
    times = []
    for _ in range(LATENCY_ROUNDS):
        for q in questions:
            t0 = time.perf_counter()
            search(engine, SYSTEM, q["question"], settings, k=K, mode="keyword")
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
        "n": len(times),
    }


class PostgresDatabase:
    """A fresh database on the server of `url`, dropped on close."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        base = sa.make_url(url)
        self.name = f"clara_quality_{uuid.uuid4().hex[:10]}"
        self.url = base.set(database=self.name).render_as_string(hide_password=False)
        self._admin = sa.create_engine(
            base.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')

    def close(self) -> None:
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin.dispose()


def run_product(
    name: str, engine_name: str, args, questions: list[dict], work: Path
) -> tuple[dict, list[tuple[str, str, str]]]:
    """One set on one engine: ingest, embed, every mode, keyword latency."""
    from core.config import get_settings, load_settings
    from core.corpus.embedding import embed_pending
    from core.corpus.vectors import reset_vector_stores
    from core.db.engine import dispose_engines
    from core.permissions import SYSTEM
    from core.system import prepare

    data = Path(tempfile.mkdtemp(prefix=f"clara-quality-{name}-{engine_name}-", dir=work))
    pg = PostgresDatabase(args.database_url or DEFAULT_PG) if engine_name == "postgresql" else None
    os.environ["CLARA_DATA_DIR"] = str(data)
    get_settings.cache_clear()
    out: dict = {"modes": {}}
    try:
        settings = load_settings(data_dir=data, database_url=pg.url if pg else None)
        st = prepare(settings)
        engine = st.engine
        t0 = time.perf_counter()
        report = ingest_set(name, engine, settings, work)
        out["ingest_seconds"] = round(time.perf_counter() - t0, 1)
        out["ingest_problems"] = report.problems()[:20]
        out["ingest_warnings"] = report.warnings()[:20]
        out["links"] = report.links.to_dict()
        out.update(corpus_counts(engine))
        log(
            f"{name}/{engine_name}: ingested {out['documents']} documents, {out['chunks']} "
            f"chunks, {out['edges']} edges in {out['ingest_seconds']} s"
        )
        if not args.skip_embeddings:
            t0 = time.perf_counter()
            out["embedded"] = embed_pending(engine, SYSTEM, settings)
            out["embed_seconds"] = round(time.perf_counter() - t0, 1)
            log(f"{name}/{engine_name}: embedded {out['embedded']} in {out['embed_seconds']} s")
        for mode in args.modes:
            if args.skip_embeddings and mode in NEEDS_VECTORS:
                continue
            t0 = time.perf_counter()
            ranked = product_ranking(engine, settings, questions, CONFIGS[mode])
            out["modes"][mode] = score(ranked, questions)
            out["modes"][mode]["seconds"] = round(time.perf_counter() - t0, 1)
        out["keyword_latency"] = keyword_latency(engine, settings, questions)
        docs = stored_documents(engine)
    finally:
        dispose_engines()
        reset_vector_stores()
        if pg:
            pg.close()
        shutil.rmtree(data, ignore_errors=True)
    return out, docs


# Baselines -------------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def bm25_ranking(docs: list[tuple[str, str, str]], questions: list[dict]) -> list[list[str]]:
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([tokens(f"{title}\n{text}") for _, title, text in docs])
    ids = [d[0] for d in docs]
    ranked = []
    for q in questions:
        scores = bm25.get_scores(tokens(q["question"]))
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
        ranked.append([ids[i] for i in order[:K]])
    return ranked


_dense_model = None


def dense_ranking(docs: list[tuple[str, str, str]], questions: list[dict]) -> list[list[str]]:
    global _dense_model
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from core.config import load_settings
    from core.corpus.embedders import model_location

    if _dense_model is None:
        _dense_model = SentenceTransformer(model_location(load_settings()), device="cpu")
        _dense_model.max_seq_length = 256

    def enc(texts: list[str]) -> np.ndarray:
        return _dense_model.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
        )

    doc_vecs = enc([f"{title}\n{text}" for _, title, text in docs])
    q_vecs = enc([q["question"] for q in questions])
    sims = q_vecs @ doc_vecs.T
    ids = [d[0] for d in docs]
    return [
        [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-row[i], ids[i]))[:K]]
        for row in sims
    ]


# Report ----------------------------------------------------------------------------------


def code_version() -> dict:
    """The commit measured, and whether core/ differed from it (the ranking code is what
    these numbers describe; a dirty tree means they describe uncommitted code)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "core").splitlines()
    return {"commit": commit or "unknown (not a git checkout)", "core_dirty": dirty}


def machine() -> dict:
    cpu = "unknown"
    mem_gb = 0.0
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
        kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
        mem_gb = kb / 1024 / 1024
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(mem_gb, 1),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def print_set(name: str, res: dict, engines: list[str]) -> None:
    first = res["engines"][engines[0]]
    print(
        f"\n== {name}: {res['questions']} questions, {first.get('documents')} documents, "
        f"{first.get('chunks')} chunks, {first.get('edges')} graph edges, "
        f"{first.get('unresolved_links')} links unresolved"
    )
    for eng in engines:
        e = res["engines"][eng]
        lat = e["keyword_latency"]
        embed = f", embed {e['embed_seconds']} s" if "embed_seconds" in e else ""
        print(
            f"   {eng}: ingest {e['ingest_seconds']} s{embed}; keyword latency p50 "
            f"{lat['p50_ms']} ms, p95 {lat['p95_ms']} ms; {len(e['ingest_problems'])} "
            "ingest problems"
        )
    head = f"{'':<12}" + "".join(f" | {eng + ' hit@1/hit@5/MRR@10':<31}" for eng in engines)
    print(head)
    print("-" * len(head))
    rows = list(res["engines"][engines[0]]["modes"]) + [b for b in BASELINES if b in res]

    def cell(m: dict | None) -> str:
        if not m:
            return f"{'—':<31}"
        return f"{m['hit@1']:.3f} / {m['hit@5']:.3f} / {m['mrr@10']:.3f}".ljust(31)

    for row in rows:
        if row in BASELINES:
            cells = "".join(f" | {cell(res[row])}" for _ in engines)
            label = f"{row} (base)"
        else:
            cells = "".join(f" | {cell(res['engines'][e]['modes'].get(row))}" for e in engines)
            label = row
        print(f"{label:<12}{cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma list of {', '.join(SETS)}")
    ap.add_argument("--engines", default="sqlite", help="comma list of sqlite, postgresql")
    ap.add_argument("--modes", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument(
        "--database-url",
        help=f"PostgreSQL server for the postgresql engine (a fresh database is created on "
        f"it and dropped; default {DEFAULT_PG}); naming it alone selects postgresql",
    )
    ap.add_argument("--skip-embeddings", action="store_true", help="keyword, graph and bm25")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--out", help="also write the JSON results to this file")
    args = ap.parse_args()
    sets = [s for s in args.sets.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    if args.database_url and "--engines" not in " ".join(sys.argv):
        engines = ["postgresql"]  # the old CLI: --database-url URL ran on that server
    args.modes = [m for m in args.modes.split(",") if m]
    for bad, allowed in ((sets, SETS), (engines, ENGINES), (args.modes, tuple(CONFIGS))):
        unknown = sorted(set(bad) - set(allowed))
        if unknown:
            ap.error(f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")

    started = time.perf_counter()
    out: dict = {
        "machine": machine(),
        "code": code_version(),
        "skip_embeddings": args.skip_embeddings,
        "sets": {},
    }
    with tempfile.TemporaryDirectory(prefix="clara-quality-") as tmp:
        work = Path(tmp)
        for name in sets:
            questions = questions_of(name)
            res: dict = {"questions": len(questions), "engines": {}}
            docs: list[tuple[str, str, str]] = []
            for eng in engines:
                res["engines"][eng], docs = run_product(name, eng, args, questions, work)
            baselines: dict[str, Callable] = {"bm25": bm25_ranking}
            if not args.skip_embeddings:
                baselines["dense"] = dense_ranking
            for base, rank in baselines.items():
                t0 = time.perf_counter()
                res[base] = score(rank(docs, questions), questions)
                res[base]["seconds"] = round(time.perf_counter() - t0, 1)
            out["sets"][name] = res
            log(f"{name}: done")
            if args.out:
                Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    m = out["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['ram_gb']} GB RAM, load {m['load_avg_start']}; python {m['python']}"
    )
    code = out["code"]
    dirty = f", core/ differs: {' '.join(code['core_dirty'])}" if code["core_dirty"] else ""
    print(f"code: {code['commit']}{dirty}")
    if args.skip_embeddings:
        print("--skip-embeddings: no vectors; graph is seeded by keyword hits only")
    for name, res in out["sets"].items():
        print_set(name, res, engines)
    print(f"\ntotal {out['seconds']} s")


if __name__ == "__main__":
    main()
