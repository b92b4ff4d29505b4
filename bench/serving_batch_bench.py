"""Batched generation (issue 13): concurrent chat clients against the same requests one by one.

    .venv/bin/python bench/serving_batch_bench.py [--model PATH] [--requests 16] [--tokens 64]
        [--rounds 3]

The demo model of the configured data dir (CLARA_DATA_DIR; built as `clara demo-model` does
when missing) unless --model names another. Every request is greedy and makes exactly
--tokens new tokens (EOS suppressed with min_new_tokens, as in chat_bench.py), so every mode
does the same work:

- raw: a plain `model.generate` loop over the requests, one after another, in a long-lived
  worker thread like the engine's (see chat_bench.py for why not the main thread);
- N clients: N threads share the list of requests; each sends its next one when its answer
  is complete (closed loop). 1 client is the requests served one by one (single stream);
- 4 clients, max_batch 1: the same queue with batching off, i.e. one request at a time.

Reported per mode: aggregate generated tokens/s (all tokens / wall time; the median of the
rounds) and p50 / p95 time to the first streamed piece (over every request of every round).
The modes run interleaved in each round so that changes of the machine's load hit all alike.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Darf ich einen Baum fällen?",
    "Was kostet die Hundesteuer?",
    "Wann wird der Sperrmüll abgeholt?",
    "Wie beantrage ich einen Anwohnerparkausweis?",
    "Wer räumt im Winter den Gehweg?",
    "Brauche ich eine Genehmigung für einen Carport?",
    "Wo melde ich meinen Wohnsitz um?",
    "Wie lange ist ein Personalausweis gültig?",
]
CLIENTS = (1, 4, 8)


@dataclass
class Run:
    wall_s: float = 0.0
    tokens: int = 0
    first_ms: list[float] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s


def median_tps(runs: list[Run]) -> float:
    return statistics.median(r.tps for r in runs)


def ttft(runs: list[Run], percent: int) -> float:
    pooled = [ms for r in runs for ms in r.first_ms]
    return statistics.quantiles(pooled, n=100, method="inclusive")[percent - 1]


# The raw loop runs in one long-lived thread, as the engine's generation does: a thread of
# its own per round would start a new OpenMP team each time and make the baseline slower.
RAW_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-generate")


def raw_loop(eng, prompts: list[str], settings, tokens: int) -> Run:
    import torch

    kw = {**eng._generate_kwargs(settings), "min_new_tokens": tokens}
    prompts_ids = [
        eng.prepare([{"role": "user", "content": p}], settings).input_ids for p in prompts
    ]

    def loop() -> Run:
        run = Run()
        t0 = time.perf_counter()
        with eng.lock, torch.inference_mode():
            for ids in prompts_ids:
                out = eng.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
                run.tokens += int(out.shape[1] - ids.shape[1])
        run.wall_s = time.perf_counter() - t0
        return run

    return RAW_THREAD.submit(loop).result()


def clients(eng, prompts: list[str], settings, n: int) -> Run:
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for p in prompts:
        jobs.put(p)
    run = Run()
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                prompt = jobs.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            first = None
            stream = eng.stream([{"role": "user", "content": prompt}], settings=settings)
            for _piece in stream:
                if first is None:
                    first = (time.perf_counter() - t0) * 1000
            with lock:
                run.tokens += stream.completion_tokens
                run.first_ms.append(first or 0.0)

    threads = [threading.Thread(target=client) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall_s = time.perf_counter() - t0
    return run


def engine(model: str, max_batch: int, tokens: int):
    from core.serving.engine import InferenceEngine

    eng = InferenceEngine(model, device="cpu", max_batch=max_batch)
    eng.load()
    orig = eng._generate_kwargs
    eng._generate_kwargs = lambda s: {**orig(s), "min_new_tokens": tokens}
    return eng


def one_round(batched, unbatched, prompts, settings, tokens) -> dict[str, Run]:
    runs = {"raw": raw_loop(batched, prompts, settings, tokens)}
    for n in CLIENTS:
        runs[f"{n} clients"] = clients(batched, prompts, settings, n)
    runs["4 clients, max_batch 1"] = clients(unbatched, prompts, settings, 4)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", help="folder or model id; default: the demo model")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from core.serving.engine import GenerationSettings
    from core.training.base_model import resolve_base_model

    model = resolve_base_model(args.model)
    settings = GenerationSettings(
        temperature=0.0, max_new_tokens=args.tokens, repetition_penalty=1.0
    )
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    batched = engine(model, 8, args.tokens)
    unbatched = engine(model, 1, args.tokens)
    params = sum(p.numel() for p in batched.model.parameters())
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    one_round(batched, unbatched, prompts[:4], settings, args.tokens)  # warm-up
    rounds = [
        one_round(batched, unbatched, prompts, settings, args.tokens) for _ in range(args.rounds)
    ]
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    modes = {name: [r[name] for r in rounds] for name in rounds[0]}
    tps = {name: median_tps(runs) for name, runs in modes.items()}
    single = tps["1 clients"]

    print(
        f"model {model} ({params / 1e6:.2f} M parameters, fp32, CPU, torch threads "
        f"{torch.get_num_threads()}); {args.requests} requests x {args.tokens} new tokens, "
        f"greedy; {args.rounds} rounds"
    )
    print(f"nproc {os.cpu_count()}; load average before {load_before}, after {load_after}")
    print("| mode | aggregate tok/s | vs one by one | TTFT p50 ms | TTFT p95 ms |")
    print("|---|---|---|---|---|")
    print(f"| raw `model.generate` loop | {tps['raw']:.1f} | {tps['raw'] / single:.2f}x | - | - |")
    for name, runs in modes.items():
        if name != "raw":
            print(
                f"| {name} | {tps[name]:.1f} | {tps[name] / single:.2f}x | "
                f"{ttft(runs, 50):.0f} | {ttft(runs, 95):.0f} |"
            )
    print(
        f"single stream = {100 * single / tps['raw']:.0f}% of the raw loop (target >= 90%); "
        f"4 clients = {tps['4 clients'] / single:.2f}x one by one (target >= 2x); "
        f"batches run {batched.stats.batches}, largest {batched.stats.max_batch_size}"
    )
    # Each round runs the modes one after the other, so a ratio within a round compares them
    # under the same load; the load of this shared machine changes from round to round.
    paired_single = statistics.median(r["1 clients"].tps / r["raw"].tps for r in rounds)
    paired_four = statistics.median(r["4 clients"].tps / r["1 clients"].tps for r in rounds)
    print(
        f"within a round (median of the rounds' ratios): single stream = "
        f"{100 * paired_single:.0f}% of raw, 4 clients = {paired_four:.2f}x one by one"
    )
    every = {name: [round(r.tps) for r in runs] for name, runs in modes.items()}
    print(f"every round's tok/s: {every}")


if __name__ == "__main__":
    main()
