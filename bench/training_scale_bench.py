"""Scale-out benchmark: one training job on 1 vs N ranks (`resources: {gpus: N}` on a CUDA
machine, `processes: N` over gloo on CPUs), through `clara worker`, next to the plain TRL
script under torchrun with the same ranks, data and arguments, in one run.

    python bench/training_scale_bench.py [--ranks 2] [--size small] [--steps 20] [--write]

tokens/s counts the real tokens of all ranks (the Trainer's own train_runtime). With DDP
each rank takes its own batch, so N ranks see N times the samples per step. --write appends
the results to bench/RESULTS.md.
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
sys.path.insert(0, str(ROOT / "bench"))

from training_bench import (  # noqa: E402
    BENCH_PEFT,
    bench_trainer,
    machine,
    machine_line,
    run_plain,
    run_worker_job,
    setup,
)


def main() -> int:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--write", action="store_true", help="append a section to bench/RESULTS.md")
    args = ap.parse_args()

    gpus = torch.cuda.device_count()
    env = machine() | {"gpus": [torch.cuda.get_device_name(i) for i in range(gpus)]}
    tmp = Path(tempfile.mkdtemp(prefix="clara-scale-bench-"))
    st, model, version, _build_s = setup(tmp / "data", args.size)
    trainer, peft_cfg = bench_trainer(args.steps), BENCH_PEFT
    rows = []
    for rep in range(args.reps):
        for ranks in (1, args.ranks):
            resources = {"gpus": ranks} if gpus else {"processes": ranks}
            threads = max(1, args.threads // ranks)
            started = time.monotonic()
            c = run_worker_job(
                st, version, f"scale-{rep}-{ranks}", trainer, peft_cfg, args.threads, resources
            )
            clara_wall = time.monotonic() - started
            p = run_plain(
                model, version, trainer, peft_cfg, threads, tmp / f"plain-{rep}-{ranks}", ranks
            )
            row = {
                "rep": rep,
                "ranks": ranks,
                "tokens": c["tokens"],
                "clara_tokens_per_s": round(c["tokens_per_second"], 1),
                "plain_tokens_per_s": round(c["tokens"] / p["train_runtime"], 1),
                "clara_job_wall_s": round(clara_wall, 1),
                "world_size": c.get("world_size", 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "machine": env,
        "size": args.size,
        "steps": args.steps,
        "rows": rows,
        "load_avg_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.write:
        write_section(result, trainer, args.ranks)
    return 0


def _median(rows: list[dict], ranks: int, key: str) -> float:
    return statistics.median(r[key] for r in rows if r["ranks"] == ranks)


def write_section(r: dict, trainer: dict, n: int) -> None:
    m = r["machine"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    device = ", ".join(m["gpus"]) if m["gpus"] else f"{m['nproc']} CPUs ({m['cpu']}), gloo"
    lines = [
        "",
        f"## Training on 1 vs {n} ranks (bench/training_scale_bench.py, {when})",
        "",
        machine_line(m, r["load_avg_end"][0], device) + f" Demo model `{r['size']}`, "
        f"{r['steps']} steps, SFTConfig {json.dumps(trainer)} (per rank).",
        "",
        "| ranks | tokens (all ranks) | clara tokens/s | plain TRL (torchrun) tokens/s | "
        "clara job wall s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['ranks']} | {row['tokens']:,} | {row['clara_tokens_per_s']} | "
            f"{row['plain_tokens_per_s']} | {row['clara_job_wall_s']} |"
        )
    speedup = _median(r["rows"], n, "clara_tokens_per_s") / _median(
        r["rows"], 1, "clara_tokens_per_s"
    )
    lines += ["", f"- clara tokens/s, {n} ranks vs 1: **{speedup:.2f}×**."]
    with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
