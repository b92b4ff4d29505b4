"""Synthetic German documents for the corpus benchmarks.

Sentences are drawn from the sample corpus (examples/corpus) and recombined, with a random
domain, type and date, so the vocabulary, word lengths and compounds are real German
administrative language while the documents are as many as a benchmark needs.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus"
DOMAINS = ["bauen", "steuern", "ordnung", "soziales", "umwelt", "verwaltung"]
TYPES = ["satzung", "merkblatt", "faq", "bescheid", "richtlinie"]


def sentences() -> list[str]:
    out: list[str] = []
    for p in sorted(SAMPLE.glob("*.md")) + sorted(SAMPLE.glob("*.txt")):
        text = p.read_text(encoding="utf-8")
        text = re.sub(r"\A---.*?---", "", text, flags=re.S)
        for s in re.split(r"(?<=[.!?])\s+", text):
            s = " ".join(s.split())
            if 40 <= len(s) <= 400 and not s.startswith(("#", "|", "-")):
                out.append(s)
    return out


def documents(n: int, chars: int = 2000, seed: int = 7) -> Iterator[dict]:
    rng = random.Random(seed)
    pool = sentences()
    for i in range(n):
        parts: list[str] = []
        size = 0
        while size < chars:
            s = rng.choice(pool)
            parts.append(s)
            size += len(s) + 1
        words = rng.choice(pool).split()[:6]
        yield {
            "id": f"syn-{i:06d}",
            "title": " ".join(words).rstrip(".,;:"),
            "text": " ".join(parts),
            "document_type": rng.choice(TYPES),
            "domain": rng.choice(DOMAINS),
            "date": f"{rng.randint(2015, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "links": [f"syn-{rng.randrange(n):06d}" for _ in range(rng.randint(0, 3))],
        }


def write_jsonl(path: Path, n: int, chars: int = 2000, seed: int = 7) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for d in documents(n, chars, seed):
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    pool = sentences()
    out = []
    for _ in range(n):
        words = [w.strip(".,;:()„“") for w in rng.choice(pool).split()]
        k = rng.randint(3, 7)
        start = rng.randrange(max(1, len(words) - k))
        out.append(" ".join(words[start : start + k]))
    return out
