"""Training benchmark: tokens/s through `clara worker` vs. a plain TRL SFTTrainer script with
the same model, data and arguments (side by side, alternating, in one run); claim latency of
an idle worker; padding share with and without packing.

    python bench/training_bench.py [--size small] [--steps 30] [--reps 2] [--write]

--write appends the results as a section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN_SCRIPT = textwrap.dedent('''
    """The baseline: TRL SFTTrainer + PEFT LoraConfig on the same rows, nothing of CLARA."""
    import json, sys, time
    import datasets, pyarrow.parquet as pq, torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(cfg["threads"])
    tok = AutoTokenizer.from_pretrained(cfg["model"], local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], local_files_only=True,
                                                 dtype=torch.float32)
    rows = [{"text": r["text"]} for r in pq.read_table(cfg["train"]).to_pylist()]
    args = SFTConfig(output_dir=cfg["out"], report_to="none",
                     use_cpu=not torch.cuda.is_available(), save_strategy="no",
                     **cfg["trainer"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM",
                                                                      **cfg["peft"]))
    out = trainer.train()
    print("RESULT " + json.dumps({"train_runtime": out.metrics["train_runtime"],
                                  "steps": trainer.state.global_step,
                                  "train_loss": out.training_loss}))
''')


def machine() -> dict:
    import peft
    import psutil
    import torch
    import transformers
    import trl

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
    }


def machine_line(m: dict, load_end: float | None = None, device: str | None = None) -> str:
    """The "Machine: …" sentence of a RESULTS.md section (what the figures were measured on)."""
    where = device or f"{m['nproc']} CPUs ({m['cpu']})"
    end = f", {load_end:.1f} at end" if load_end is not None else ""
    return (
        f"Machine: {where}, {m['ram_gb']} GB RAM, Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}, trl {m['trl']}; load average "
        f"{m['load_avg_start'][0]:.1f} at start{end}."
    )


def bench_trainer(steps: int) -> dict:
    """The SFTConfig of the training benchmarks (the same in each, so they compare)."""
    return {
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "max_length": 256,
        "packing": True,
        "learning_rate": 2e-3,
        "logging_steps": 5,
        "seed": 42,
        "save_steps": 10_000,
    }


BENCH_PEFT = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


def setup(data_dir: Path, size: str) -> tuple:
    os.environ.update(
        CLARA_DATA_DIR=str(data_dir),
        CLARA_ENV="testing",
        CLARA_ADMIN_PASSWORD="bench-admin-1",
        CLARA_DEMO_MODEL_SIZE=size,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        CLARA_CLI_USER="admin",
    )
    from core.config import get_settings
    from core.datasets.service import SampleIn, add_samples, create_dataset
    from core.datasets.versions import freeze
    from core.permissions import SYSTEM
    from core.system import prepare
    from core.training.demo_model import _corpus_texts, ensure_demo_model

    get_settings.cache_clear()
    st = prepare(get_settings())
    t0 = time.monotonic()
    model = ensure_demo_model(st.settings)
    build_s = time.monotonic() - t0
    paragraphs = [
        p.strip() for t in _corpus_texts() for p in t.split("\n\n") if len(p.strip()) > 60
    ]
    ds = create_dataset(st.engine, SYSTEM, "bench-text")
    add_samples(
        st.engine,
        SYSTEM,
        ds.id,
        [SampleIn(kind="text", text=p, status="accepted") for p in paragraphs],
    )
    version = freeze(st.engine, SYSTEM, ds.id, eval_ratio=0.05)
    return st, model, version, build_s


def run_plain(
    model: Path,
    version,
    trainer: dict,
    peft_cfg: dict,
    threads: int,
    out: Path,
    ranks: int = 1,
) -> dict:
    """The plain script; with `ranks` > 1 under torchrun, as anyone would run it."""
    cfg = {
        "model": str(model),
        "train": str(version.path / "train.parquet"),
        "out": str(out),
        "trainer": trainer,
        "peft": peft_cfg,
        "threads": threads,
    }
    if ranks > 1:
        script = out.with_suffix(".py")
        script.write_text(PLAIN_SCRIPT)
        command = [
            *(sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}"),
            *(str(script), json.dumps(cfg)),
        ]
    else:
        command = [sys.executable, "-c", PLAIN_SCRIPT, json.dumps(cfg)]
    proc = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CLARA_TRAIN_THREADS": str(threads)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"plain run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def run_worker_job(
    st,
    version,
    name: str,
    trainer: dict,
    peft_cfg: dict,
    threads: int,
    resources: dict | None = None,
) -> dict:
    from core.permissions import SYSTEM
    from core.training.adapters import get_adapter
    from core.training.jobs import get_job, submit_job

    job = submit_job(
        st.engine,
        SYSTEM,
        {
            "name": name,
            "dataset_version": version.id,
            "method": "lora",
            "peft": peft_cfg,
            "trainer": trainer,
            **({"resources": resources} if resources else {}),
        },
    )
    subprocess.run(
        [sys.executable, "-m", "cli", "worker", "--once"],
        cwd=ROOT,
        env={**os.environ, "CLARA_TRAIN_THREADS": str(threads)},
        check=True,
        capture_output=True,
    )
    done = get_job(st.engine, SYSTEM, job.id)
    if done.state != "succeeded":
        raise RuntimeError(f"bench job failed: {done.error}")
    return get_adapter(st.engine, SYSTEM, name).metrics


def padding_share_without_packing(model: Path, version, trainer: dict, batches: int = 20) -> float:
    """Padding share of the same data and batch size with packing off (collator only)."""
    import datasets
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    m = AutoModelForCausalLM.from_pretrained(model, local_files_only=True)
    rows = [{"text": r["text"]} for r in pq.read_table(version.path / "train.parquet").to_pylist()]
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        report_to="none",
        use_cpu=True,
        **{**trainer, "packing": False},
    )
    tr = SFTTrainer(
        model=m, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok
    )
    real = total = 0
    for i, batch in enumerate(tr.get_train_dataloader()):
        if i >= batches:
            break
        total += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
    return 1 - real / total


def claim_latency(st, n: int = 10) -> dict:
    """An idle worker (already running) picks up a newly queued job: submit → claimed, and
    submit → the job's child process running."""
    from sqlalchemy import select

    from core.db import reading
    from core.permissions import SYSTEM
    from core.training.jobs import get_job, submit_sleep_job
    from core.training.models import TrainingMetric

    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    claims, starts = [], []
    try:
        time.sleep(8)  # let the worker import and go idle
        for _ in range(n):
            job = submit_sleep_job(st.engine, SYSTEM, 0.0, name="latency")
            while get_job(st.engine, SYSTEM, job.id).state != "succeeded":
                time.sleep(0.05)
            done = get_job(st.engine, SYSTEM, job.id)
            with reading(st.engine) as s:
                ran_at = s.scalar(
                    select(TrainingMetric.at).where(
                        TrainingMetric.job_id == job.id, TrainingMetric.phase == "run"
                    )
                )
            claims.append((done.started_at - job.created_at).total_seconds())
            starts.append((ran_at - job.created_at).total_seconds())
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return {
        "claim_median_s": round(statistics.median(claims), 3),
        "claim_max_s": round(max(claims), 3),
        "child_running_median_s": round(statistics.median(starts), 3),
        "child_running_max_s": round(max(starts), 3),
        "samples": n,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--write", action="store_true", help="append a section to bench/RESULTS.md")
    args = ap.parse_args()

    env = machine()
    tmp = Path(tempfile.mkdtemp(prefix="clara-train-bench-"))
    st, model, version, build_s = setup(tmp / "data", args.size)
    trainer, peft_cfg = bench_trainer(args.steps), BENCH_PEFT
    plain, clara = [], []
    for rep in range(args.reps):
        p = run_plain(model, version, trainer, peft_cfg, args.threads, tmp / f"plain{rep}")
        c = run_worker_job(st, version, f"bench-{rep}", trainer, peft_cfg, args.threads)
        plain.append(p)
        clara.append(c)
        print(
            json.dumps(
                {
                    "rep": rep,
                    "plain": p,
                    "clara": {
                        k: c.get(k)
                        for k in (
                            "train_runtime_s",
                            "tokens",
                            "tokens_per_second",
                            "padding_share",
                            "steps",
                        )
                    },
                }
            ),
            flush=True,
        )
    tokens = clara[0]["tokens"]  # same seed, data and steps: the same batches in every run
    plain_tps = [tokens / p["train_runtime"] for p in plain]
    clara_tps = [c["tokens_per_second"] for c in clara]
    ratio = statistics.median(clara_tps) / statistics.median(plain_tps)
    no_pack = padding_share_without_packing(model, version, trainer)
    latency = claim_latency(st)
    from core.artifacts import read_manifest

    manifest = read_manifest(model) or {}
    result = {
        "machine": env,
        "demo_model": {
            "size": args.size,
            "parameters": manifest["parameters"],
            "build_s": round(build_s, 1),
        },
        "train_samples": version.counts["train"],
        "steps": args.steps,
        "reps": args.reps,
        "tokens_per_run": tokens,
        "plain_tokens_per_s": [round(x, 1) for x in plain_tps],
        "clara_tokens_per_s": [round(x, 1) for x in clara_tps],
        "ratio": round(ratio, 3),
        "padding_share_packing": clara[0]["padding_share"],
        "padding_share_no_packing": round(no_pack, 4),
        "latency": latency,
        "load_avg_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.write:
        write_section(result, trainer)
    return 0


def write_section(r: dict, trainer: dict) -> None:
    m = r["machine"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "",
        f"## Training (bench/training_bench.py, {when})",
        "",
        machine_line(m, r["load_avg_end"][0]) + " Shared with other engineers' jobs.",
        "",
        f"Model: demo model size `{r['demo_model']['size']}` ({r['demo_model']['parameters']:,} "
        f"parameters, built in {r['demo_model']['build_s']} s). Data: "
        f"{r['train_samples']} text samples of the sample corpus (frozen version). LoRA r=8 "
        f"all-linear; SFTConfig {json.dumps(trainer)}; {r['reps']} alternating runs each.",
        "",
        "| path | tokens/s per run | median |",
        "| --- | --- | --- |",
        f"| plain TRL SFTTrainer script | {', '.join(map(str, r['plain_tokens_per_s']))} | "
        f"{statistics.median(r['plain_tokens_per_s']):.1f} |",
        f"| `clara worker` (queue, child process, DB metrics, fencing) | "
        f"{', '.join(map(str, r['clara_tokens_per_s']))} | "
        f"{statistics.median(r['clara_tokens_per_s']):.1f} |",
        "",
        f"- clara / plain: **{r['ratio']:.1%}** (target ≥ 95%). Both use the Trainer's own "
        f"train_runtime over the same {r['tokens_per_run']:,} tokens.",
        f"- Claim latency of an idle worker (submit → claimed), {r['latency']['samples']} jobs: "
        f"median {r['latency']['claim_median_s']} s, max {r['latency']['claim_max_s']} s "
        f"(target < 2 s); submit → job process running: median "
        f"{r['latency']['child_running_median_s']} s, max {r['latency']['child_running_max_s']} s.",
        f"- Padding share with packing on (text data): {r['padding_share_packing']:.1%}; same "
        f"data and batch size with packing off: {r['padding_share_no_packing']:.1%}.",
    ]
    with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
