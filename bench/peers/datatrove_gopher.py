"""Peer runner: datatrove 0.10.1 GopherRepetitionFilter + GopherQualityFilter on a JSONL file.

Runs in its own virtualenv (never the project's):
    python3 -m venv /tmp/peer-dt && /tmp/peer-dt/bin/pip install datatrove==0.10.1 spacy regex
    /tmp/peer-dt/bin/python bench/peers/datatrove_gopher.py --input docs.jsonl --config cfg.json

The filters see documents as a datatrove pipeline feeds them: the quality filter only gets
documents the repetition filter kept. German word tokenisation is datatrove's own choice for
"deu": spaCy's blank 'de' tokenizer (no model download). Thresholds come from --config so
they equal the ones the benchmark gives our steps (German stop words, max word length).
Prints one JSON object: timings (median of --repeats), peak RSS, per-document decisions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--config", required=True, help="JSON with the thresholds")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    with open(args.config, encoding="utf-8") as f:
        cfg = json.load(f)
    with open(args.input, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f]
    docs = [Document(text=r["text"], id=r["id"]) for r in recs]
    n_bytes = sum(len(r["text"].encode("utf-8")) for r in recs)

    rep = GopherRepetitionFilter(
        dup_line_frac=cfg["max_duplicate_line_fraction"],
        dup_para_frac=cfg["max_duplicate_paragraph_fraction"],
        dup_line_char_frac=cfg["max_duplicate_line_char_fraction"],
        dup_para_char_frac=cfg["max_duplicate_paragraph_char_fraction"],
        top_n_grams=tuple((int(k), v) for k, v in cfg["max_top_ngram_char_fraction"].items()),
        dup_n_grams=tuple((int(k), v) for k, v in cfg["max_duplicate_ngram_char_fraction"].items()),
        language="deu",
    )
    qual = GopherQualityFilter(
        min_doc_words=cfg["gopher_min_words"],
        max_avg_word_length=cfg["max_avg_word_length"],
        min_avg_word_length=cfg["min_avg_word_length"],
        max_symbol_word_ratio=cfg["max_symbol_to_word_ratio"],
        max_bullet_lines_ratio=cfg["max_bullet_line_fraction"],
        max_ellipsis_lines_ratio=cfg["max_ellipsis_line_fraction"],
        max_non_alpha_words_ratio=cfg["min_alpha_word_fraction"],
        min_stop_words=cfg["min_stop_words"],
        stop_words=cfg["stop_words"],
        language="deu",
    )
    tok = load_word_tokenizer("deu")
    tok.word_tokenize(docs[0].text)  # load spaCy's blank model outside the timing

    # Wall-clock and CPU time: the machine is shared, and CPU time is what contention from
    # other processes disturbs least.
    times: list[float] = []
    cpu_times: list[float] = []
    decisions: list[tuple[bool, str]] = []
    for _ in range(args.repeats):
        decisions = []
        t0, c0 = time.perf_counter(), time.process_time()
        for d in docs:
            r = rep.filter(d)
            if r is True:
                r = qual.filter(d)
            decisions.append((True, "") if r is True else (False, r[1]))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)

    # Share of the CPU time spent in word tokenisation: one more pass with the filters'
    # split_into_words wrapped in a CPU timer.
    import datatrove.pipeline.filters.gopher_quality_filter as gq
    import datatrove.pipeline.filters.gopher_repetition_filter as gr

    spent = [0.0]

    def timed(fn):
        def wrapper(*a, **kw):
            c = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[0] += time.process_time() - c

        return wrapper

    gq.split_into_words, gr.split_into_words = (
        timed(gq.split_into_words),
        timed(gr.split_into_words),
    )
    c0 = time.process_time()
    for d in docs:
        if rep.filter(d) is True:
            qual.filter(d)
    tok_share = spent[0] / (time.process_time() - c0)

    median = statistics.median(times)
    cpu_median = statistics.median(cpu_times)
    out = {
        "peer": f"datatrove {importlib.metadata.version('datatrove')}",
        "python": sys.version.split()[0],
        "docs": len(docs),
        "bytes": n_bytes,
        "seconds": times,
        "cpu_seconds": cpu_times,
        "docs_per_s": len(docs) / median,
        "docs_per_cpu_s": len(docs) / cpu_median,
        "mb_per_s": n_bytes / median / 1e6,
        "tokenisation_share": round(min(1.0, tok_share), 3),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "decisions": [
            {"id": d.id, "keep": k, "reason": r} for d, (k, r) in zip(docs, decisions, strict=True)
        ],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
