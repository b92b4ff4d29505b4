"""One SFT run: base model (+ LoRA / QLoRA / an existing adapter) trained with TRL on rows of
a frozen dataset version. Device-agnostic (cuda when available, else cpu) and free of any
database or queue knowledge, so benchmarks and the GPU check can call `run_sft` directly.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.artifacts import staged_dir
from core.training.callbacks import MetricsCallback, MetricSink, StopCallback, TokenCounter
from core.training.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from core.training.distributed import current_rank, sum_over_ranks
from core.training.spec import TrainingSpec

ADAPTER_DIR = "adapter"
DEFAULT_TRAINER_ARGS: dict[str, Any] = {
    "logging_steps": 5,
    "save_steps": 20,
    "save_strategy": "steps",
    "save_total_limit": 2,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}


@dataclass
class RunResult:
    adapter_dir: Path | None
    stopped_early: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir else None
        return d


def rows_from_parquet(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a dataset-version Parquet file (columns id, kind, text, messages)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def to_trl_records(rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Text samples → {"text"}, chat samples → {"messages"}; a mix becomes all text (TRL
    needs one format per dataset), chat rendered with the model's chat template. A preference
    pair counts as its conversation with the chosen answer."""

    def messages(r: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": m["content"]} for m in (r.get("messages") or [])]

    def kind(r: dict[str, Any]) -> str:
        k = r.get("kind") or ("chat" if r.get("messages") else "text")
        return "chat" if k == "pref" else k

    if {kind(r) for r in rows} == {"chat"}:
        return [{"messages": messages(r)} for r in rows]
    out = []
    for r in rows:
        if kind(r) == "chat":
            out.append({"text": tokenizer.apply_chat_template(messages(r), tokenize=False)})
        else:
            out.append({"text": r.get("text") or ""})
    return [r for r in out if r.get("text") or r.get("messages")]


def set_torch_threads() -> int:
    """All cores by default (training is the only work of this process); CLARA_TRAIN_THREADS
    overrides when several jobs share a machine."""
    import torch

    from core.config import get_settings

    n = get_settings().train_threads or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def build_sft_config(spec: TrainingSpec, output_dir: Path, device: str) -> Any:
    """TRL's SFTConfig (DPOConfig for method dpo) from the spec's trainer keys."""
    import torch
    from trl import DPOConfig, SFTConfig

    kwargs = dict(DEFAULT_TRAINER_ARGS)
    kwargs.update(spec.trainer)
    kwargs.update(
        output_dir=str(output_dir / CHECKPOINT_DIR), report_to="none", use_cpu=device == "cpu"
    )
    if device == "cuda" and "bf16" not in spec.trainer and "fp16" not in spec.trainer:
        kwargs["bf16"] = torch.cuda.is_bf16_supported()
    if "max_steps" not in kwargs and "num_train_epochs" not in kwargs:
        kwargs["num_train_epochs"] = 1
    if current_rank() is not None and "ddp_find_unused_parameters" not in spec.trainer:
        # LoRA trains the same parameters at every step: DDP's search for unused ones
        # (on by default here) is an extra pass over the graph for nothing.
        kwargs["ddp_find_unused_parameters"] = False
    return (DPOConfig if spec.method == "dpo" else SFTConfig)(**kwargs)


def _counting_trainer_class(dpo: bool = False):
    from trl import DPOTrainer, SFTTrainer

    class CountingTrainer(DPOTrainer if dpo else SFTTrainer):
        """Counts real vs. padded tokens of each training batch (tokens/s, padding share):
        every `…input_ids` tensor of the batch (DPO's batches hold prompt, chosen and
        rejected ones) with its attention mask."""

        token_counter: TokenCounter

        def training_step(self, model, inputs, *args, **kwargs):
            for key, ids in inputs.items():
                if not key.endswith("input_ids") or not hasattr(ids, "numel"):
                    continue
                total = int(ids.numel())
                mask = inputs.get(key.replace("input_ids", "attention_mask"))
                self.token_counter.total += total
                self.token_counter.real += int(mask.sum()) if mask is not None else total
            return super().training_step(model, inputs, *args, **kwargs)

    return CountingTrainer


def _evaluate(trainer, when: str, step: int, metrics, sink, log, *, perplexity: bool) -> None:
    """The evaluation before or after training, into the run's metrics and the sink."""
    loss = trainer.evaluate()["eval_loss"]
    metrics[f"eval_loss_{when}"] = loss
    row = {"phase": f"eval_{when}", "step": step, "eval_loss": loss}
    said = f"eval {when} training: loss {loss:.4f}"
    if perplexity:
        metrics[f"eval_perplexity_{when}"] = row["eval_perplexity"] = math.exp(min(loss, 50))
        said += f" perplexity {row['eval_perplexity']:.2f}"
    sink(row)
    log(said)


def to_preference_records(rows: list[dict[str, Any]], _tokenizer: Any = None) -> list[dict]:
    """Preference pairs (samples of kind pref) in TRL's conversational preference format:
    the prompt turns, the chosen answer, the rejected answer. Other samples are left out."""
    out = []
    for r in rows:
        if r.get("kind") != "pref" or not r.get("messages") or not r.get("text"):
            continue
        msgs = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
        out.append(
            {
                "prompt": msgs[:-1],
                "chosen": msgs[-1:],
                "rejected": [{"role": "assistant", "content": r["text"]}],
            }
        )
    return out


def run_sft(
    spec: TrainingSpec,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    output_dir: str | Path,
    *,
    base_model: str,
    parent_adapter_path: str | Path | None = None,
    sink: MetricSink | None = None,
    stop: threading.Event | None = None,
    guard: Callable[[], bool] | None = None,
    on_lost: Callable[[], None] | None = None,
    on_checkpoint: Callable[[str, int], None] | None = None,
    tracker: Any = None,
    device: str | None = None,
    eval_before: bool = True,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train; resume from the newest checkpoint in `output_dir` when there is one.

    The finished adapter is written to output_dir/adapter (via a temp folder and a rename).
    `stop` set → a checkpoint is saved at the end of the current step and the run returns
    with `stopped_early=True` and no adapter (`metrics["checkpoint"]` names it). `tracker`
    (core.training.stopping.StopTracker) follows the run's phases and step/save times.
    """
    import datasets
    from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training

    from core.training.base_model import default_device, load_base_model

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    rank = current_rank()
    if rank is not None and device == "cuda":
        import torch

        torch.cuda.set_device(rank.local_rank)  # "cuda" is then this rank's GPU
    threads = set_torch_threads() if device == "cpu" else None
    sink = sink or (lambda row: None)
    stop = stop or threading.Event()
    started = time.monotonic()

    quant = spec.quantization if spec.method in ("qlora", "continue") else None
    log(
        f"loading base model {base_model} on {device}"
        + (f" ({quant.bits}-bit {quant.quant_type})" if quant else "")
        + (f", {threads} threads" if threads else "")
    )
    model, tokenizer = load_base_model(base_model, quantization=quant, device=device)
    peft_config = None
    if spec.continues:
        if parent_adapter_path is None:
            raise ValueError(f"method {spec.method} from an adapter needs the adapter's path")
        if quant is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = PeftModel.from_pretrained(model, str(parent_adapter_path), is_trainable=True)
    else:
        if quant is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        peft_config = LoraConfig(task_type="CAUSAL_LM", **spec.lora_kwargs())

    dpo = spec.method == "dpo"
    records = to_preference_records if dpo else to_trl_records
    train_ds = datasets.Dataset.from_list(records(train_rows, tokenizer))
    if dpo and not len(train_ds):
        raise ValueError("the dataset version holds no preference pairs (samples of kind pref)")
    eval_records = records(eval_rows, tokenizer)
    eval_ds = datasets.Dataset.from_list(eval_records) if eval_records else None
    args = build_sft_config(spec, output_dir, device)
    counter = TokenCounter()
    stopper = StopCallback(
        stop, guard=guard, on_lost=on_lost, on_checkpoint=on_checkpoint, tracker=tracker
    )
    trainer_cls = _counting_trainer_class(dpo)
    # DPO's eval loss is the preference loss: no perplexity is derived from it.
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsCallback(sink, counter, perplexity=not dpo), stopper],
    )
    trainer.token_counter = counter
    if hasattr(trainer.model, "print_trainable_parameters"):
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        log(f"trainable parameters: {trainable:,} of {total:,}")

    metrics: dict[str, Any] = {
        "train_samples": len(train_ds),
        "eval_samples": len(eval_ds) if eval_ds is not None else 0,
        "device": device,
    }
    resume = latest_checkpoint(output_dir)
    if eval_ds is not None and eval_before and resume is None:
        _evaluate(trainer, "before", 0, metrics, sink, log, perplexity=not dpo)
    if resume:
        log(f"resuming from {resume}")
    out = trainer.train(resume_from_checkpoint=resume)
    real, total = sum_over_ranks([counter.real, counter.total], args.device)
    metrics.update(
        {
            "train_loss": out.training_loss,
            "steps": trainer.state.global_step,
            "train_runtime_s": round(time.monotonic() - started, 2),
            "tokens": real,
            "padding_share": round(1.0 - real / total, 4) if total else 0.0,
            "packing": bool(getattr(args, "packing", False)),
        }
    )
    if rank is not None:
        metrics["world_size"] = rank.world_size
    train_s = out.metrics.get("train_runtime") or 0
    if train_s > 0:
        metrics["tokens_per_second"] = real / train_s
    if stopper.stopped_early:
        step = trainer.state.global_step
        saved = str(output_dir / CHECKPOINT_DIR / f"checkpoint-{step}")
        if (Path(saved) / "trainer_state.json").exists():
            metrics["checkpoint"] = saved
            log(f"stopped at step {step}; checkpoint saved at {saved}")
        else:
            log(f"stopped at step {step}; no checkpoint could be saved")
        return RunResult(None, True, metrics, resume)
    if eval_ds is not None:
        _evaluate(
            trainer, "after", trainer.state.global_step, metrics, sink, log, perplexity=not dpo
        )
    if not trainer.is_world_process_zero():
        return RunResult(None, False, metrics, resume)  # rank 0 writes the adapter
    final = output_dir / ADAPTER_DIR
    # A staged folder renamed into place (replacing the adapter of an earlier attempt).
    with staged_dir(final, replace=True) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "clara-run.json").write_text(json.dumps(metrics, indent=2, default=str))
    log(f"adapter written to {final}")
    return RunResult(final, False, metrics, resume)
