"""DPO next to SFT on the same data (issue 15, item 3): training speed and peak memory of
preference training (TRL DPOTrainer, a policy and a reference pass per pair) against SFT on
the chosen answers, through the workbench's runner, with plain TRL trainers on the same
rows and arguments as the baseline, in one run. Each run is its own process, so its peak
resident memory (ru_maxrss) is its own.

    python bench/dpo_bench.py [--size small] [--steps 20] [--pairs 200] [--write]

Pairs: paragraphs of the sample corpus as chosen answers to "Was steht in <title>?"; the
rejected answer is the same paragraph with its sentences in reverse order and every third
word dropped (fluent-looking, wrong). --write appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from training_bench import BENCH_PEFT, machine, machine_line  # noqa: E402

RUN = textwrap.dedent("""
    import json, resource, sys, time
    cfg = json.loads(sys.argv[1])
    import torch
    torch.set_num_threads(cfg["threads"])
    rows = json.load(open(cfg["rows"]))
    from core.training.runner import to_preference_records, to_trl_records
    from core.training.spec import TrainingSpec
    started = time.monotonic()
    if cfg["plain"]:
        import datasets
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
        tok = AutoTokenizer.from_pretrained(cfg["model"], local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cfg["model"], local_files_only=True)
        dpo = cfg["method"] == "dpo"
        records = (to_preference_records if dpo else to_trl_records)(rows, tok)
        Config, Trainer = (DPOConfig, DPOTrainer) if dpo else (SFTConfig, SFTTrainer)
        args = Config(output_dir=cfg["out"], report_to="none", use_cpu=True,
                      save_strategy="no", **cfg["trainer"])
        trainer = Trainer(model=model, args=args,
                          train_dataset=datasets.Dataset.from_list(records),
                          processing_class=tok,
                          peft_config=LoraConfig(task_type="CAUSAL_LM", **cfg["peft"]))
        out = trainer.train()
        result = {"train_runtime": out.metrics["train_runtime"],
                  "steps": trainer.state.global_step}
    else:
        from core.training.runner import run_sft
        spec = TrainingSpec(name="bench", dataset_version=1, method=cfg["method"],
                            peft=cfg["peft"], trainer={**cfg["trainer"], "save_steps": 10000})
        r = run_sft(spec, rows, [], cfg["out"], base_model=cfg["model"], eval_before=False,
                    log=lambda m: None)
        tps = r.metrics.get("tokens_per_second")
        # The Trainer's own train_runtime, as for the plain runs (train_runtime_s counts the
        # model load too).
        result = {"train_runtime": r.metrics["tokens"] / tps if tps else float("nan"),
                  "steps": r.metrics["steps"], "tokens": r.metrics["tokens"],
                  "tokens_per_second": tps}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["wall_s"] = round(time.monotonic() - started, 2)
    print("RESULT " + json.dumps(result))
""")


def pairs(n: int) -> list[dict]:
    from core.training.demo_model import _corpus_texts

    out = []
    for text in _corpus_texts():
        title = text.strip().splitlines()[0].lstrip("# ").strip()[:80]
        for para in text.split("\n\n")[1:]:
            para = " ".join(para.split())
            if len(para) < 120:
                continue
            sentences = [s for s in para.split(". ") if s]
            wrong = ". ".join(reversed(sentences))
            wrong = " ".join(w for i, w in enumerate(wrong.split()) if i % 3 != 2)
            out.append(
                {
                    "id": str(len(out)),
                    "kind": "pref",
                    "text": wrong,
                    "messages": [
                        {"role": "user", "content": f"Was steht in {title}?"},
                        {"role": "assistant", "content": para},
                    ],
                }
            )
            if len(out) >= n:
                return out
    return out


def run(cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CLARA_TRAIN_THREADS": str(cfg["threads"])},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"run failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    env = machine()
    tmp = Path(tempfile.mkdtemp(prefix="clara-dpo-bench-"))
    os.environ.update(CLARA_DATA_DIR=str(tmp / "data"), CLARA_DEMO_MODEL_SIZE=args.size)
    from core.config import get_settings
    from core.training.demo_model import ensure_demo_model

    get_settings.cache_clear()
    model = ensure_demo_model(get_settings())
    rows = pairs(args.pairs)
    rows_path = tmp / "pairs.json"
    rows_path.write_text(json.dumps(rows, ensure_ascii=False))
    trainer = {
        "max_steps": args.steps,
        "per_device_train_batch_size": 4,
        "max_length": 256,
        "learning_rate": 5e-4,
        "logging_steps": 5,
        "seed": 42,
    }
    peft = BENCH_PEFT
    results = []
    for method in ("lora", "dpo"):
        for plain in (True, False):
            cfg = {
                "method": method,
                "plain": plain,
                "model": str(model),
                "rows": str(rows_path),
                "out": str(tmp / f"{method}-{'plain' if plain else 'clara'}"),
                "trainer": trainer,
                "peft": peft,
                "threads": args.threads,
            }
            r = run(cfg) | {"method": "sft" if method == "lora" else "dpo", "plain": plain}
            results.append(r)
            print(json.dumps(r), flush=True)
    result = {"machine": env, "size": args.size, "pairs": len(rows), "rows": results}
    print(json.dumps(result, indent=2))
    if args.write:
        write_section(result, trainer)
    return 0


def write_section(r: dict, trainer: dict) -> None:
    m = r["machine"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "",
        f"## DPO next to SFT (bench/dpo_bench.py, {when})",
        "",
        machine_line(m) + f" Demo model `{r['size']}`, {r['pairs']} "
        f"preference pairs from the sample corpus (SFT trains on their chosen answers), "
        f"LoRA r=8 all-linear, {json.dumps(trainer)}.",
        "",
        "| method | path | steps | train s | steps/s | tokens/s (ours) | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        steps_s = row["steps"] / row["train_runtime"] if row["train_runtime"] else 0
        tps = row.get("tokens_per_second")
        lines.append(
            f"| {row['method']} | {'plain TRL' if row['plain'] else 'clara runner'} | "
            f"{row['steps']} | {row['train_runtime']:.1f} | {steps_s:.2f} | "
            f"{f'{tps:.0f}' if tps else '–'} | {row['peak_rss_mb']:.0f} |"
        )
    with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
