"""GPU check: LoRA and QLoRA 4-bit training through our runner, tokens/s and peak GPU memory.

Run on a machine with a CUDA GPU (the project's CPU-only machines skip it):

    python bench/gpu_check.py [--steps 60] [--out DIR]

It builds the demo tokenizer from the sample corpus, a randomly initialised Llama model of
~110 M parameters (large enough for the GPU to matter, small enough to need no download),
and trains it through `core.training.runner.run_sft` — the same code path `clara worker`
uses — once with LoRA (bf16) and once with QLoRA (4-bit NF4, double quantization). Results
are printed and written as JSON and Markdown to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(workdir: Path, hidden: int = 768, layers: int = 12) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.training.demo_model import build_demo_model

    tok_dir = build_demo_model(workdir / "tiny", size="tiny")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        # A multiple of 256 as in real Llama configs: bitsandbytes' int8 matmul (cuBLASLt)
        # fails on layer widths that are not a multiple of 4.
        intermediate_size=(hidden * 8 // 3 + 255) // 256 * 256,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = workdir / "gpu-llama"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def corpus_rows(n: int) -> list[dict]:
    from core.training.demo_model import _corpus_texts

    texts = _corpus_texts()
    rows = []
    i = 0
    while len(rows) < n:
        rows.append(
            {"id": f"r{i}", "kind": "text", "text": texts[i % len(texts)], "messages": None}
        )
        i += 1
    return rows


def run(method: str, model_dir: Path, workdir: Path, steps: int, device: str = "cuda") -> dict:
    import torch

    from core.training.runner import run_sft
    from core.training.spec import TrainingSpec

    spec_data = {
        "name": f"gpu-{method}",
        "dataset_version": "gpu-check@v1",
        "method": method,
        "peft": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        "trainer": {
            "max_steps": steps,
            "per_device_train_batch_size": 16,
            "max_length": 512,
            "packing": True,
            "learning_rate": 2e-4,
            "logging_steps": 10,
            "save_steps": 10_000,
            "seed": 0,
        },
    }
    if method == "qlora":
        spec_data["quantization"] = {
            "bits": 4,
            "quant_type": "nf4",
            "double_quant": True,
            "compute_dtype": "bfloat16",
        }
    if method == "qlora8":
        spec_data["method"] = "qlora"
        spec_data["quantization"] = {"bits": 8, "compute_dtype": "bfloat16"}
    spec = TrainingSpec(**spec_data)
    losses: list[float] = []

    def sink(row: dict) -> None:
        if row.get("loss") is not None:
            losses.append(float(row["loss"]))

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    result = run_sft(
        spec,
        corpus_rows(600),
        corpus_rows(32),
        workdir / method,
        base_model=str(model_dir),
        sink=sink,
        device=device,
        eval_before=False,
    )
    wall = time.monotonic() - started
    return {
        "method": method,
        "adapter": str(workdir / method / "adapter"),
        "steps": result.metrics.get("steps"),
        "tokens_per_second": round(result.metrics.get("tokens_per_second", 0.0), 1),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if device == "cuda"
        else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.metrics.get("train_loss"),
        "eval_perplexity_after": result.metrics.get("eval_perplexity_after"),
        "padding_share": result.metrics.get("padding_share"),
        "wall_s": round(wall, 1),
    }


def base_dtype(model_dir: Path, quantization: str | None) -> str:
    """The dtype the base model's weights are loaded in by `load_base_model` on CUDA."""
    import torch

    from core.training.base_model import load_base_model

    model, _tok = load_base_model(str(model_dir), quantization=quantization, device="cuda")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    del model
    torch.cuda.empty_cache()
    return "+".join(dtypes)


def chat_check(model_dir: Path, adapter: str, quantization: str | None) -> dict:
    """Serve the base model (optionally 4/8-bit) with a trained adapter through the chat
    engine, as `clara chat-server` does, and generate on the GPU."""
    import torch

    from core.serving.engine import AdapterRef, GenerationSettings, InferenceEngine

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    engine = InferenceEngine(str(model_dir), quantization=quantization, device="cuda")
    started = time.monotonic()
    engine.load()
    engine.add_adapter(AdapterRef(name="gpu-adapter", path=adapter))
    load_s = time.monotonic() - started
    messages = [{"role": "user", "content": "Wann brauche ich eine Baugenehmigung?"}]
    settings = GenerationSettings(temperature=0.0, max_new_tokens=48)
    started = time.monotonic()
    with_adapter = engine.generate(messages, adapter="gpu-adapter", settings=settings)
    gen_s = time.monotonic() - started
    base = engine.generate(messages, adapter=None, settings=settings)
    return {
        "quantization": quantization or "none (bf16)",
        "device": str(engine.model.device),
        "load_s": round(load_s, 2),
        "generate_s": round(gen_s, 2),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "answer_with_adapter": with_adapter[:120],
        "adapter_changes_answer": with_adapter != base,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument(
        "--warmup-steps",
        type=int,
        default=10,
        help="an untimed LoRA run first, so CUDA start-up cost is not measured",
    )
    ap.add_argument("--methods", default="lora,qlora,qlora8")
    ap.add_argument(
        "--smoke-cpu",
        action="store_true",
        help="a tiny model on the CPU, to check the script itself without a GPU",
    )
    args = ap.parse_args()
    import torch

    device = "cpu" if args.smoke_cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check here (this script is for the GPU machine)")
        return 0
    import bitsandbytes
    import peft
    import transformers
    import trl

    env = {
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(env))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = (
            build_model(workdir, 64, 2)
            if args.smoke_cpu
            else build_model(workdir, args.hidden, args.layers)
        )
        n_params = sum(
            p.numel()
            for p in transformers.AutoModelForCausalLM.from_pretrained(model_dir).parameters()
        )
        env["model_parameters"] = n_params
        if args.warmup_steps:
            run("lora", model_dir, workdir / "warmup", args.warmup_steps, device)
        for method in args.methods.split(","):
            r = run(method, model_dir, workdir, args.steps, device)
            print(json.dumps(r), flush=True)
            results.append(r)
        checks: dict = {}
        if device == "cuda":
            checks["base_dtype"] = {q or "none": base_dtype(model_dir, q) for q in (None, "4bit")}
            print(json.dumps(checks), flush=True)
            trained = {r["method"]: r["adapter"] for r in results}
            chats = []
            for quant, method in ((None, "lora"), ("4bit", "qlora"), ("8bit", "qlora8")):
                if method in trained:
                    try:
                        chats.append(chat_check(model_dir, trained[method], quant))
                    except Exception as err:  # report, then go on with the other checks
                        chats.append({"quantization": quant, "error": repr(err)[:300]})
                    print(json.dumps(chats[-1]), flush=True)
            checks["chat"] = chats
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(
        json.dumps({"env": env, "results": results, "checks": checks}, indent=2)
    )
    lines = [
        f"GPU check on {env['gpu']} (torch {env['torch']}, CUDA {env['cuda']}, "
        f"transformers {env['transformers']}, peft {env['peft']}, trl {env['trl']}, "
        f"bitsandbytes {env['bitsandbytes']}); Llama model {n_params / 1e6:.0f} M "
        f"parameters, batch 16 × 512 tokens packed, {args.steps} steps.",
        "",
        "| method | tokens/s | peak GPU memory (MiB) | loss first → last | wall (s) |",
        "| --- | --- | --- | --- | --- |",
    ]

    def loss(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for r in results:
        lines.append(
            f"| {r['method']} | {r['tokens_per_second']:,} | "
            f"{r['peak_gpu_memory_mib'] or 0:,} | {loss(r['first_loss'])} → "
            f"{loss(r['last_loss'])} | {r['wall_s']} |"
        )
    if checks.get("base_dtype"):
        lines += ["", f"Base weights as loaded on CUDA: {checks['base_dtype']}", ""]
        lines += [
            "| chat serving | device | load (s) | 48 tokens (s) | peak GPU memory (MiB) | "
            "adapter changes answer |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in checks.get("chat", []):
            if "error" in c:
                lines.append(f"| {c['quantization']} | error: {c['error']} | | | | |")
            else:
                lines.append(
                    f"| {c['quantization']} | {c['device']} | {c['load_s']} | "
                    f"{c['generate_s']} | {c['peak_gpu_memory_mib']:,} | "
                    f"{c['adapter_changes_answer']} |"
                )
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
