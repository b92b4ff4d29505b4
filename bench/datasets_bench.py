"""Datasets benchmark: import, scoring run, review-queue page, bulk decision, freeze, export.

Runs against a fresh SQLite database in a temp data dir (and Postgres when --pg-url is given),
with N synthetic German instruction samples (distinct sentences, some duplicates and PII).
Prints one JSON line per engine and appends nothing by itself; copy the figures into
bench/RESULTS.md.

    .venv/bin/python bench/datasets_bench.py --n 20000 [--pg-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    "Satzung",
    "Gebühr",
    "Abfall",
    "Hund",
    "Steuer",
    "Antrag",
    "Bescheid",
    "Frist",
    "Amt",
    "Bürger",
    "Stadt",
    "Bauantrag",
    "Genehmigung",
    "Widerspruch",
    "Verwaltung",
    "Gemeinde",
    "Zuständigkeit",
    "Verordnung",
    "Friedhof",
    "Baum",
    "Fällung",
    "Parkplatz",
    "Lärm",
    "Ruhezeit",
    "Kita",
    "Beitrag",
    "Elterngeld",
    "Datenschutz",
    "Auskunft",
]
GLUE = [
    "der",
    "die",
    "das",
    "und",
    "ist",
    "mit",
    "von",
    "für",
    "wird",
    "nach",
    "bei",
    "auf",
    "im",
    "zum",
    "zur",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) if i % 2 else rng.choice(GLUE) for i in range(n)) + "."


def write_jsonl(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    line = ""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            if i % 40 == 1 and i > 1:
                f.write(line)  # every 40th sample repeats the previous one exactly
                continue
            answer = " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(rng.randint(2, 6)))
            if i % 50 == 0:
                answer += " Kontakt: amt@stadt.example"
            line = (
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"Frage {i}: " + sentence(rng, 10)},
                            {"role": "assistant", "content": answer},
                        ]
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
            f.write(line)


def run(url: str, n: int, data_dir: Path, jsonl: Path) -> dict:
    os.environ["CLARA_DATA_DIR"] = str(data_dir)
    os.environ["CLARA_DATABASE_URL"] = url
    from core.config import get_settings
    from core.datasets.export import export_version
    from core.datasets.importers import import_file
    from core.datasets.review import SampleFilter, bulk_decide, list_samples
    from core.datasets.scoring import score_dataset
    from core.datasets.service import create_dataset
    from core.datasets.versions import freeze
    from core.db import dispose_engines, get_engine, upgrade
    from core.permissions import SYSTEM

    get_settings.cache_clear()
    engine = get_engine(get_settings())
    upgrade(engine)
    out: dict = {"engine": engine.dialect.name, "samples": n}
    ds = create_dataset(engine, SYSTEM, f"bench-{uuid.uuid4().hex[:6]}")

    t = time.perf_counter()
    rep = import_file(engine, SYSTEM, ds.id, jsonl)
    out["import_s"] = round(time.perf_counter() - t, 2)
    out["import_rows_per_s"] = round(rep.imported / out["import_s"])

    t = time.perf_counter()
    run_ = score_dataset(engine, SYSTEM, ds.id)
    out["score_s"] = round(time.perf_counter() - t, 2)
    out["score_samples_per_s"] = round(run_.done / out["score_s"])
    out["flagged_exact_dup"] = (
        run_.stats["pipeline"].get("exact_duplicates", {}).get("exact_duplicate", 0)
    )

    t = time.perf_counter()
    for page in range(5):
        list_samples(
            engine,
            SYSTEM,
            ds.id,
            SampleFilter(status=["pending"], reason="pii_email"),
            "score_asc",
            page * 20,
            20,
        )
    out["queue_page_ms"] = round((time.perf_counter() - t) / 5 * 1000, 1)
    t = time.perf_counter()
    for page in range(5):
        list_samples(engine, SYSTEM, ds.id, None, "score_asc", page * 50, 50)
    out["queue_page50_unfiltered_ms"] = round((time.perf_counter() - t) / 5 * 1000, 1)

    t = time.perf_counter()
    accepted = bulk_decide(engine, SYSTEM, ds.id, "accepted", SampleFilter(min_score=0.5))
    out["bulk_accept_s"] = round(time.perf_counter() - t, 2)
    out["accepted"] = accepted

    t = time.perf_counter()
    v = freeze(engine, SYSTEM, ds.id, eval_ratio=0.1, seed=42)
    out["freeze_s"] = round(time.perf_counter() - t, 2)
    out["parquet_mb"] = round(sum(f["bytes"] for f in v.manifest["files"].values()) / 1e6, 2)

    t = time.perf_counter()
    export_version(engine, SYSTEM, v.ref, "messages", "jsonl")
    out["export_jsonl_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    export_version(engine, SYSTEM, v.ref, "alpaca", "parquet")
    out["export_alpaca_parquet_s"] = round(time.perf_counter() - t, 2)
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    dispose_engines()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--pg-url", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="clara-ds-bench-") as tmp:
        tmp = Path(tmp)
        jsonl = tmp / "bench.jsonl"
        write_jsonl(jsonl, args.n)
        print(json.dumps(run(f"sqlite:///{tmp / 'clara.db'}", args.n, tmp / "data", jsonl)))
        if args.pg_url:
            from sqlalchemy import create_engine, text

            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.pg_url)
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                sep = "&" if "?" in args.pg_url else "?"
                url = f"{args.pg_url}{sep}options=-csearch_path%3D{schema}"
                print(json.dumps(run(url, args.n, tmp / "data-pg", jsonl)))
            finally:
                with admin.begin() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
