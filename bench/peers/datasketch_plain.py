"""Peer runner: near-duplicate clusters with plain datasketch, the way it is usually written.

    python bench/peers/datasketch_plain.py --input docs.jsonl --out clusters.json [--batch]

For every document: words = re.findall(r"\\w+", text), shingles = lowercased word 5-grams,
`m = MinHash(num_perm=128); for sh in shingles: m.update(sh.encode())` (or one
`m.update_batch(...)` with --batch), then `lsh.query(m)` and `lsh.insert(id, m)` on a
`MinHashLSH(threshold=0.8, num_perm=128)`. Clusters are the connected components of "query
returned it" (union-find). Writes timings, peak RSS and the clusters as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import time

WORD_RE = re.compile(r"\w+")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", action="store_true", help="update_batch instead of update")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    args = ap.parse_args()

    from datasketch import MinHash, MinHashLSH

    with open(args.input, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    n = args.ngram

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    t0, c0 = time.perf_counter(), time.process_time()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    for d in docs:
        words = WORD_RE.findall(d["text"])
        if not words:
            continue
        shingles = [" ".join(words[i : i + n]).lower() for i in range(max(len(words) - n + 1, 1))]
        m = MinHash(num_perm=args.num_perm)
        if args.batch:
            m.update_batch([s.encode("utf-8") for s in shingles])
        else:
            for s in shingles:
                m.update(s.encode("utf-8"))
        key = d["id"]
        parent[key] = key
        for other in lsh.query(m):
            a, b = find(key), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
        lsh.insert(key, m)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    roots = {k: find(k) for k in parent}
    sizes: dict[str, int] = {}
    for r in roots.values():
        sizes[r] = sizes.get(r, 0) + 1
    clusters = {k: r for k, r in roots.items() if sizes[r] > 1}
    out = {
        "docs": len(docs),
        "seconds": wall,
        "cpu_seconds": cpu,
        "docs_per_s": len(docs) / wall,
        "docs_per_cpu_s": len(docs) / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "clusters": clusters,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
