"""The demo base model: a small Llama-architecture causal LM pre-trained on the sample corpus.

Built once per data dir (data_dir/models/demo-llama/), deterministically: a byte-level BPE
tokenizer trained with `tokenizers` on examples/corpus, a `LlamaConfig` model, and a short
pre-training loop so that generations look like the corpus and fine-tuning visibly lowers
the loss. Built through core.artifacts: `build_once` serialises two processes building at
once (file lock), the build happens in a staging folder that is renamed into place (a reader
never sees half a model), and `write_manifest` describes it (manifest.json).

While it builds, the build writes its progress (phase, fraction, estimate) to a small JSON
file next to the lock; `demo_build_status(settings)` reads it for the pages (Chat, Training)
and is None whenever no build holds the lock.

CLARA_DEMO_MODEL_SIZE (tiny | small, default small) picks the size; tests use tiny.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from core.artifacts import (
    MANIFEST as MANIFEST,  # re-exported: `clara demo-model` reads it
)
from core.artifacts import (
    build_once,
    lock_is_held,
    lock_path,
    read_manifest,
    write_manifest,
)
from core.config import Settings, get_settings
from core.errors import ClaraError

CORPUS_DIR = Path(__file__).resolve().parents[2] / "examples" / "corpus"
LEGACY_MANIFEST = "clara-demo-model.json"  # what builds before core.artifacts wrote
DEMO_DIRNAME = "demo-llama"
SPECIAL_TOKENS = [
    "<|pad|>",
    "<|bos|>",
    "<|end|>",
    "<|unk|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class DemoSize:
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    block: int
    steps: int
    batch: int
    lr: float


SIZES = {
    # ~0.14 M parameters: builds in seconds, for tests.
    "tiny": DemoSize(1024, 64, 2, 4, 2, 128, 64, 80, 16, 5e-3),
    # ~0.8 M parameters: about 2 CPU-seconds a step here, so ~2 minutes on 2 idle cores.
    "small": DemoSize(4096, 128, 2, 4, 2, 256, 128, 100, 8, 3e-3),
}
SEED = 1234
ProgressFn = Callable[[str, float], None]
# Share of the whole build per phase (pre-training dominates; tokenizer and save are short).
PHASES = {
    "starting": (0.0, 0.0),
    "tokenizer": (0.0, 0.05),
    "pre-training": (0.05, 0.97),
    "saving": (0.97, 1.0),
}


class DemoModelError(ClaraError, RuntimeError):
    pass


def demo_size_name() -> str:
    return get_settings().demo_model_size  # validated there against tiny | small


def demo_model_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.data_path / "models" / DEMO_DIRNAME


def _lock_path(target: Path) -> Path:
    return lock_path(target)


def _status_path(target: Path) -> Path:
    return target.parent / f".{DEMO_DIRNAME}.status.json"


@dataclass(frozen=True)
class DemoBuildStatus:
    """A demo model build under way: what it does now, how far it is, how long it still
    takes (None until it can be estimated from measured progress)."""

    phase: str  # starting | tokenizer | pre-training | saving
    fraction: float  # 0..1 of the whole build
    eta_seconds: float | None
    message: str
    size: str = ""
    elapsed_seconds: float = 0.0


class _StatusWriter:
    """The build's side: rewrites the status file (atomically) at every phase and step."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size
        self.started = time.time()
        self._phase_started = self.started

    def update(
        self, phase: str, within: float, message: str, eta_seconds: float | None = None
    ) -> None:
        lo, hi = PHASES.get(phase, (0.0, 1.0))
        fraction = lo + (hi - lo) * min(1.0, max(0.0, within))
        data = {
            "pid": os.getpid(),
            "size": self.size,
            "phase": phase,
            "fraction": round(fraction, 4),
            "eta_seconds": eta_seconds,
            "message": message,
            "started_at": self.started,
            "updated_at": time.time(),
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        except OSError:
            pass

    def clear(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def demo_build_status(settings: Settings | None = None) -> DemoBuildStatus | None:
    """The demo model build under way in this data dir, or None when none is running."""
    target = demo_model_dir(settings)
    path = _status_path(target)
    if not path.exists() or not lock_is_held(target):
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    eta = data.get("eta_seconds")
    if eta is not None:
        # The estimate was made when the file was written: count down since.
        eta = max(0.0, float(eta) - max(0.0, time.time() - float(data.get("updated_at") or 0)))
    return DemoBuildStatus(
        phase=str(data.get("phase") or "starting"),
        fraction=min(1.0, max(0.0, float(data.get("fraction") or 0.0))),
        eta_seconds=eta,
        message=str(data.get("message") or "building the demo model"),
        size=str(data.get("size") or ""),
        elapsed_seconds=max(0.0, time.time() - float(data.get("started_at") or time.time())),
    )


def _corpus_texts(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """The plain text of the sample corpus files that need no special reader."""
    texts: list[str] = []
    if not corpus_dir.is_dir():
        raise DemoModelError(f"sample corpus not found at {corpus_dir}")
    for path in sorted(corpus_dir.iterdir()):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        try:
            if suffix in (".md", ".txt"):
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
            elif suffix == ".html":
                from bs4 import BeautifulSoup

                texts.append(
                    BeautifulSoup(
                        path.read_text(encoding="utf-8", errors="replace"), "html.parser"
                    ).get_text("\n")
                )
            elif suffix == ".jsonl":
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(row, dict):
                        texts.extend(
                            str(v) for v in row.values() if isinstance(v, str) and len(v) > 40
                        )
            elif suffix == ".csv":
                with path.open(encoding="utf-8", errors="replace", newline="") as fh:
                    for row in csv.reader(fh):
                        texts.extend(c for c in row if len(c) > 40)
        except (OSError, UnicodeError):
            continue  # a broken sample file must not stop the demo model
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise DemoModelError(f"no readable text in {corpus_dir}")
    return texts


def _corpus_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def demo_manifest(folder: Path) -> dict | None:
    """The demo model's manifest (also one written before core.artifacts), or None."""
    manifest = read_manifest(folder)
    if manifest is None:
        try:
            manifest = json.loads((Path(folder) / LEGACY_MANIFEST).read_text())
        except (OSError, ValueError):
            return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(folder: Path, size: str) -> bool:
    manifest = demo_manifest(folder)
    return bool(manifest) and manifest.get("size") == size and (folder / "config.json").exists()


def built_demo_model(settings: Settings | None = None) -> Path | None:
    """The demo model folder when it is built (for the configured size), else None."""
    folder = demo_model_dir(settings)
    return folder if _is_complete(folder, demo_size_name()) else None


def ensure_demo_model(
    settings: Settings | None = None, *, progress: ProgressFn | None = None
) -> Path:
    """The demo model folder, built on first use (core.artifacts.build_once)."""
    target = demo_model_dir(settings)
    size = demo_size_name()
    if _is_complete(target, size):
        return target

    def build(staging: Path) -> None:
        # Runs holding the build lock, so the status file is this build's alone.
        status = _StatusWriter(_status_path(target), size)
        try:
            status.update("starting", 0.0, f"building the demo model ({size})")
            build_demo_model(staging, size=size, progress=progress, status=status)
        finally:
            status.clear()

    return build_once(target, lambda folder: _is_complete(folder, size), build)


def build_demo_model(
    out_dir: Path,
    *,
    size: str = "small",
    corpus_dir: Path = CORPUS_DIR,
    progress: ProgressFn | None = None,
    status: _StatusWriter | None = None,
) -> Path:
    """Train tokenizer and model from scratch into `out_dir` (deterministic for a given corpus).

    `progress(message, fraction)` is called at each phase and every ten pre-training steps;
    `status` (the build's status file) at every step, with an estimate of the time left."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = SIZES[size]
    report = progress or (lambda _msg, _frac: None)
    started = time.monotonic()
    random.seed(SEED)
    torch.manual_seed(SEED)
    texts = _corpus_texts(corpus_dir)
    report("training tokenizer", 0.0)
    if status is not None:
        status.update("tokenizer", 0.0, "training the tokenizer")

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # Whole documents are tokenised once below and cut into blocks; no length warning needed.
    tokenizer.model_max_length = 10**9

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.block * 4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)

    ids: list[int] = []
    for t in texts:
        ids.extend([tokenizer.bos_token_id, *tokenizer(t)["input_ids"], tokenizer.eos_token_id])
    blocks = torch.tensor(ids[: len(ids) // cfg.block * cfg.block]).view(-1, cfg.block)
    if status is not None:
        status.update("pre-training", 0.0, f"pre-training step 0/{cfg.steps}")

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        gen = torch.Generator().manual_seed(SEED)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
        )
        model.train()
        losses = []
        pre_started = time.monotonic()
        for step in range(cfg.steps):
            idx = torch.randint(0, blocks.shape[0], (cfg.batch,), generator=gen)
            batch = blocks[idx]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if status is not None:
                done = step + 1
                per_step = (time.monotonic() - pre_started) / done
                status.update(
                    "pre-training",
                    done / cfg.steps,
                    f"pre-training step {done}/{cfg.steps} loss {losses[-1]:.3f}",
                    # The rest of the steps, plus the save (about two steps' time).
                    eta_seconds=round(per_step * (cfg.steps - done + 2), 1),
                )
            if step % 10 == 0 or step == cfg.steps - 1:
                report(
                    f"pre-training step {step + 1}/{cfg.steps} loss {losses[-1]:.3f}",
                    (step + 1) / cfg.steps,
                )
    finally:
        torch.set_num_threads(threads)
    if status is not None:
        status.update("saving", 0.0, "saving the model", eta_seconds=None)
    tokenizer.model_max_length = cfg.block * 4
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    write_manifest(
        out_dir,
        "demo-model",
        what="CLARA demo base model (Llama architecture, pre-trained on examples/corpus)",
        size=size,
        size_settings=asdict(cfg),
        parameters=sum(p.numel() for p in model.parameters()),
        corpus_sha256=_corpus_digest(texts),
        corpus_tokens=len(ids),
        first_loss=losses[0],
        final_loss=sum(losses[-10:]) / len(losses[-10:]),
        seed=SEED,
        build_seconds=round(time.monotonic() - started, 1),
    )
    report("done", 1.0)
    return out_dir
