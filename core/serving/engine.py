"""The inference engine: one base model in memory, LoRA adapters switched on it by name.

The base model is loaded once per process (``base_loads`` counts it, so tests and /health can
prove that switching never reloads it). Adapters are loaded lazily into the same PEFT model
and selected with ``set_adapter``; "base" runs with every adapter disabled. Concurrent
requests are served together, one forward pass over several sequences (core.serving.batching);
a batch that mixes adapters uses PEFT's mixed-adapter batches. One lock guards the model:
PEFT's active adapter is global state, so loading, switching and generating take turns.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Hashable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from core.errors import ClaraError, NotFound

if TYPE_CHECKING:
    from core.serving.batching import BatchScheduler, GenerationStream, Request

BASE = "base"
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
DEFAULT_BATCH_WINDOW_MS = 15.0
DEFAULT_MAX_BATCH = 8

Quantization = Literal["4bit", "8bit"] | None


class ServingError(ClaraError):
    """An expected failure of the chat engine; the message is meant for the person chatting."""


class AdapterUnavailable(ServingError, NotFound):
    """The adapter named in a request is not (or no longer) registered."""

    error_code = "model_not_found"  # OpenAI's code for it (api.errors)

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        shown = ", ".join(available) if available else "none registered"
        super().__init__(
            f"adapter {name!r} is not available (deleted or never registered); "
            f"choose one of: base, {shown}"
        )


class ContextTooLong(ServingError):
    error_code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, limit: int, max_new_tokens: int) -> None:
        self.prompt_tokens, self.limit, self.max_new_tokens = prompt_tokens, limit, max_new_tokens
        super().__init__(
            f"the prompt has {prompt_tokens} tokens; with max_tokens {max_new_tokens} it does "
            f"not fit the model's context of {limit} tokens: shorten the prompt or lower "
            "max_tokens"
        )


class BaseModelMismatch(ServingError):
    def __init__(self, adapter: str, adapter_base: str, loaded_base: str) -> None:
        self.adapter, self.adapter_base, self.loaded_base = adapter, adapter_base, loaded_base
        super().__init__(
            f"adapter {adapter!r} was trained on base model {adapter_base!r}, but this server "
            f"runs {loaded_base!r}; load it on a server started with that base model "
            "(CLARA_BASE_MODEL)"
        )


class GenerationSettings(BaseModel):
    """The knobs a person may turn per request; ranges keep a typo from hanging the server."""

    system_prompt: str = ""
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    # OpenAI's rule: at most four; the answer ends before the first one that appears.
    stop: list[str] = Field(default_factory=list, max_length=4)

    @field_validator("stop")
    @classmethod
    def _stop_strings_not_empty(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        return v

    def batch_key(self) -> Hashable:
        """Requests batch together only with the same sampling: generate() applies these
        to the whole batch."""
        if self.temperature > 0:
            return ("sample", self.temperature, self.top_p, self.repetition_penalty)
        return ("greedy", self.repetition_penalty)


@dataclass(frozen=True)
class AdapterRef:
    """What the engine needs to know about a registered adapter."""

    name: str
    path: str
    id: str = ""
    base_model: str = ""
    base_model_fingerprint: str = ""


@dataclass
class PreparedPrompt:
    input_ids: Any  # torch.LongTensor of shape (1, n)
    messages: list[dict[str, str]]
    dropped_turns: int = 0
    truncated_tokens: int = 0
    context_limit: int = 0
    prompt_tokens: int = 0  # before anything was left out
    max_new_tokens: int = 0

    @property
    def shortened(self) -> bool:
        return bool(self.dropped_turns or self.truncated_tokens)

    def refuse_if_shortened(self) -> None:
        """For callers that must not answer a shortened prompt (the OpenAI-compatible API)."""
        if self.shortened:
            raise ContextTooLong(self.prompt_tokens, self.context_limit, self.max_new_tokens)

    @property
    def note(self) -> str:
        """A visible note when the conversation was shortened to fit the context."""
        parts = []
        if self.dropped_turns:
            parts.append(f"{self.dropped_turns} earliest message(s) were left out")
        if self.truncated_tokens:
            parts.append(f"the start of your message was cut by {self.truncated_tokens} tokens")
        if not parts:
            return ""
        return (
            f"Note: {' and '.join(parts)} to fit the model's context of "
            f"{self.context_limit} tokens."
        )


@dataclass
class EngineStats:
    base_loads: int = 0
    adapter_loads: int = 0
    switches: int = 0
    generations: int = 0
    batches: int = 0
    max_batch_size: int = 0
    last_switch_ms: float = 0.0
    loaded_adapters: list[str] = field(default_factory=list)


def _default_loader(name_or_path: str, quantization: Quantization, device: str | None):
    # Training's loader: one place that knows quantization, dtypes and offline resolution.
    from core.training.base_model import load_base_model

    return load_base_model(name_or_path, quantization=quantization, device=device)


def fingerprint_of(name_or_path: str) -> str:
    """The base model's fingerprint exactly as the adapter registry records it."""
    from core.training.base_model import base_model_fingerprint

    return base_model_fingerprint(name_or_path)


class InferenceEngine:
    """Base model loaded once; adapters loaded by name, switched with ``set_adapter``."""

    def __init__(
        self,
        base_model: str | Path,
        *,
        quantization: Quantization = None,
        device: str | None = None,
        loader=None,
        batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.base_model = str(base_model)
        self.quantization = quantization
        self.device = device
        self._loader = loader or _default_loader
        self.batch_window_ms = batch_window_ms
        self.max_batch = max_batch
        self._scheduler: BatchScheduler | None = None
        self._model = None
        self._tokenizer = None
        self._fingerprint: str | None = None
        self._slots: dict[str, str] = {}  # adapter name -> PEFT adapter slot name
        self._refs: dict[str, AdapterRef] = {}
        self._active: str | None = None
        # Public methods and the batch runner take it; the _underscored ones expect it held.
        self.lock = threading.Lock()
        self.stats = EngineStats()

    # Loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the base model (once; later calls do nothing)."""
        if self._model is not None:
            return
        with self.lock:
            self._load()

    def _load(self) -> None:
        if self._model is None:
            model, tok = self._loader(self.base_model, self.quantization, self.device)
            model.eval()
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            if not getattr(tok, "chat_template", None):
                raise ServingError(
                    f"base model {self.base_model!r} has no chat template in its tokenizer; "
                    "use an instruction/chat model or the demo model"
                )
            self._model, self._tokenizer = model, tok
            self.stats.base_loads += 1
            self._scheduler = self._new_scheduler()

    def _new_scheduler(self) -> BatchScheduler:
        from core.serving.batching import BatchScheduler

        return BatchScheduler(
            self._run_batch,
            window_s=self.batch_window_ms / 1000,
            max_batch=self.max_batch,
            context_limit=self.context_limit,
        )

    @property
    def model(self):
        self.load()
        return self._model

    @property
    def tokenizer(self):
        self.load()
        return self._tokenizer

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.base_model)
        return self._fingerprint

    @property
    def context_limit(self) -> int:
        cfg = self.model.config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000 and (n is None or tok_max < n):
            n = tok_max
        return int(n or 2048)

    def loaded_adapters(self) -> list[str]:
        return sorted(self._slots)

    def check_base(self, ref: AdapterRef) -> None:
        """Refuse an adapter trained on another base model (naming both)."""
        if ref.base_model_fingerprint:
            if ref.base_model_fingerprint != self.fingerprint:
                raise BaseModelMismatch(
                    ref.name, ref.base_model or ref.base_model_fingerprint, self.base_model
                )
            return
        cfg_file = Path(ref.path) / "adapter_config.json"
        if cfg_file.exists():
            declared = json.loads(cfg_file.read_text()).get("base_model_name_or_path") or ""
            if declared and not self._same_base(declared):
                raise BaseModelMismatch(ref.name, declared, self.base_model)

    def _same_base(self, declared: str) -> bool:
        if Path(declared).expanduser().resolve() == Path(self.base_model).expanduser().resolve():
            return True
        try:
            return fingerprint_of(declared) == self.fingerprint
        except Exception:  # the declared base is not available here: it cannot be ours
            return False

    def add_adapter(self, ref: AdapterRef) -> None:
        """Load an adapter into the shared PEFT model (no-op when it is already there)."""
        with self.lock:
            self._add_adapter(ref)

    def _add_adapter(self, ref: AdapterRef) -> None:
        self._load()
        if ref.name == BASE:
            raise ServingError("'base' is reserved for the model without adapters")
        if ref.name in self._slots:
            if self._same_files(self._refs[ref.name], ref):
                return
            self._remove_adapter(ref.name)  # same name, new files: reload those
        if not (Path(ref.path) / "adapter_config.json").exists():
            raise ServingError(
                f"adapter {ref.name!r}: no adapter_config.json in {ref.path}; the adapter "
                "folder is missing or incomplete"
            )
        self.check_base(ref)
        # The registry id is part of the slot: a name deleted and registered again (same
        # folder, new weights) must not be served from the old slot.
        slot = "a_" + hashlib.sha1(f"{ref.name}\0{ref.path}\0{ref.id}".encode()).hexdigest()[:12]
        from peft import PeftModel

        model = self.model
        if isinstance(model, PeftModel):
            if slot in model.peft_config:  # kept as the last one after its removal
                self._drop_slot(slot)
            model.load_adapter(ref.path, adapter_name=slot)
        else:
            self._model = PeftModel.from_pretrained(model, ref.path, adapter_name=slot)
            self._model.eval()
            self._active = slot
        self._slots[ref.name] = slot
        self._refs[ref.name] = ref
        for orphan in set(self._model.peft_config) - set(self._slots.values()):
            self._drop_slot(orphan)
        self.stats.adapter_loads += 1
        self.stats.loaded_adapters = self.loaded_adapters()

    @staticmethod
    def _same_files(a: AdapterRef, b: AdapterRef) -> bool:
        return a.path == b.path and a.id == b.id

    def _drop_slot(self, slot: str) -> None:
        live = [s for s in self._model.peft_config if s != slot]
        if not live:
            return  # PEFT cannot drop its only adapter; it stays unreachable by name
        if self._active == slot:
            self._set_slot(live[0])
        self._model.delete_adapter(slot)

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            self._remove_adapter(name)

    def _remove_adapter(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        self._refs.pop(name, None)
        self.stats.loaded_adapters = self.loaded_adapters()
        if slot is not None:
            # The last adapter stays in memory (PEFT cannot drop its only adapter) but is no
            # longer reachable by name; it is freed when the next one is loaded.
            self._drop_slot(slot)

    def sync(self, refs: list[AdapterRef]) -> None:
        """Forget adapters that left the registry; new ones are loaded on first use."""
        with self.lock:
            wanted = {r.name: r for r in refs}
            for name in list(self._slots):
                if name not in wanted or not self._same_files(wanted[name], self._refs[name]):
                    self._remove_adapter(name)

    def _set_slot(self, slot: str) -> None:
        if self._active != slot:
            t0 = time.perf_counter()
            self._model.set_adapter(slot)
            self._active = slot
            self.stats.switches += 1
            self.stats.last_switch_ms = (time.perf_counter() - t0) * 1000

    def _select(self, adapter: str | None, refs: dict[str, AdapterRef] | None = None):
        """Make `adapter` the active one; returns the context to generate in.

        `refs` (from the registry) lets an adapter registered after start be loaded now.
        """
        name = adapter or BASE
        from peft import PeftModel

        self._ensure_adapter(name, refs)
        if name == BASE:
            if isinstance(self.model, PeftModel):
                return self._model.disable_adapter()
            return nullcontext()
        self._set_slot(self._slots[name])
        return nullcontext()

    def _ensure_adapter(self, name: str, refs: dict[str, AdapterRef] | None) -> None:
        if name == BASE or name in self._slots:
            return
        if refs is None or name not in refs:
            raise AdapterUnavailable(name, sorted(refs or self._slots))
        self._add_adapter(refs[name])

    def _mixable(self, name: str, refs: dict[str, AdapterRef] | None) -> bool:
        """Whether PEFT can serve this adapter in a batch with other adapters: plain LoRA
        only (it refuses DoRA and the other adapter types)."""
        if name == BASE:
            return True
        ref = (refs or {}).get(name) or self._refs.get(name)
        cfg_file = Path(ref.path) / "adapter_config.json" if ref else None
        if cfg_file is None or not cfg_file.exists():
            return False
        cfg = json.loads(cfg_file.read_text())
        return cfg.get("peft_type") == "LORA" and not cfg.get("use_dora")

    # Prompting -------------------------------------------------------------------------------

    def prepare(
        self, messages: list[dict[str, str]], settings: GenerationSettings
    ) -> PreparedPrompt:
        """Apply the chat template; drop the oldest turns (never the last) to fit the context."""
        import torch

        if not messages or messages[-1].get("role") != "user":
            raise ServingError("the conversation must end with a user message")
        for i, m in enumerate(messages):
            if m.get("role") not in ("user", "assistant", "system"):
                raise ServingError(f"message {i + 1}: role must be user, assistant or system")
        tok = self.tokenizer
        system = (
            [{"role": "system", "content": settings.system_prompt}]
            if settings.system_prompt
            else []
        )
        turns = [m for m in messages if m["role"] != "system"]
        limit = self.context_limit
        budget = max(8, limit - settings.max_new_tokens)
        dropped = 0

        def encode(msgs: list[dict[str, str]]) -> list[int]:
            out = tok.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            return list(out["input_ids"])

        ids = encode(system + turns)
        original = len(ids)
        while len(ids) > budget and len(turns) > 1:
            # Drop whole exchanges from the front so the history never starts mid-answer.
            turns = turns[1:]
            dropped += 1
            while turns and turns[0]["role"] != "user":
                turns = turns[1:]
                dropped += 1
            ids = encode(system + turns)
        cut = 0
        if len(ids) > budget:
            # One message alone is too long: keep its end, which usually holds the question.
            last = turns[-1]["content"]
            content_ids = tok(last, add_special_tokens=False)["input_ids"]
            cut = len(ids) - budget
            kept = tok.decode(content_ids[cut:], skip_special_tokens=True)
            turns = [{"role": "user", "content": kept}]
            ids = encode(system + turns)
            if len(ids) > budget:  # the template or system prompt alone is over the limit
                extra = len(ids) - budget
                cut += extra
                ids = ids[:1] + ids[1 + extra :]
        return PreparedPrompt(
            input_ids=torch.tensor([ids], dtype=torch.long),
            messages=system + turns,
            dropped_turns=dropped,
            truncated_tokens=cut,
            context_limit=limit,
            prompt_tokens=original,
            max_new_tokens=settings.max_new_tokens,
        )

    def prepare_text(self, prompt: str, settings: GenerationSettings) -> PreparedPrompt:
        """A plain text to continue (no chat template); too long for the context is refused."""
        import torch

        if not prompt:
            raise ServingError("the prompt is empty")
        ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        limit = self.context_limit
        prepared = PreparedPrompt(
            input_ids=torch.tensor([ids], dtype=torch.long),
            messages=[{"role": "user", "content": prompt}],
            context_limit=limit,
            prompt_tokens=len(ids),
            max_new_tokens=settings.max_new_tokens,
        )
        if len(ids) + settings.max_new_tokens > limit:
            raise ContextTooLong(len(ids), limit, settings.max_new_tokens)
        return prepared

    def _generate_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        tok = self.tokenizer
        sample = settings.temperature > 0
        kw: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": sample,
            "repetition_penalty": settings.repetition_penalty,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
        if sample:
            kw["temperature"] = settings.temperature
            kw["top_p"] = settings.top_p
        else:
            # Greedy: neutralise sampling defaults from generation_config to avoid warnings.
            kw["temperature"] = None
            kw["top_p"] = None
            kw["top_k"] = None
        return kw

    # Generation ------------------------------------------------------------------------------

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        adapter: str | None = None,
        settings: GenerationSettings | None = None,
        refs: dict[str, AdapterRef] | None = None,
        prepared: PreparedPrompt | None = None,
    ) -> GenerationStream:
        """Queue one answer; the stream yields it piece by piece (text deltas).

        An adapter neither loaded nor in `refs` is refused here, before anything is queued.
        """
        from core.serving.batching import GenerationStream, Request

        settings = settings or GenerationSettings()
        self.load()
        name = adapter or BASE
        if name != BASE and name not in self._slots and name not in (refs or {}):
            raise AdapterUnavailable(name, sorted(refs or self._slots))
        prepared = prepared or self.prepare(messages, settings)
        request = Request(
            prepared.input_ids[0].tolist(),
            key=(settings.batch_key(), None if self._mixable(name, refs) else name),
            max_new_tokens=settings.max_new_tokens,
            stop=settings.stop,
            payload=_Job(name, refs, settings),
        )
        stream = GenerationStream(request)
        self._scheduler.submit(request)
        return stream

    def generate(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))

    def _run_batch(self, batch: list[Request]) -> None:
        """One `generate` over the batch's rows; runs in the scheduler's thread."""
        import torch
        from transformers import StoppingCriteriaList

        from core.serving.batching import BatchStreamer, left_padded

        with self.lock:
            rows = self._with_adapters(batch)
            if not rows:
                return
            self.stats.batches += 1
            self.stats.max_batch_size = max(self.stats.max_batch_size, len(rows))
            self.stats.generations += len(rows)
            tok = self.tokenizer
            ids, mask = left_padded(rows, tok.pad_token_id, self.model.device)
            streamer = BatchStreamer(tok, rows, frozenset({tok.eos_token_id}))
            kw = self._generate_kwargs(rows[0].payload.settings)
            kw["max_new_tokens"] = max(r.max_new_tokens for r in rows)
            ctx, mixed = self._adapter_mode(rows)
            try:
                with ctx, torch.inference_mode():
                    self.model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList(
                            [streamer.stopping_criteria(ids.shape[1])]
                        ),
                        **kw,
                        **mixed,
                    )
            except BaseException:
                if mixed:
                    _drop_mixed_batch_hooks(self._model)
                raise

    def _with_adapters(self, batch: list[Request]) -> list[Request]:
        """The requests whose adapter is loaded (now, if need be); the others fail alone."""
        for req in batch:
            try:
                self._ensure_adapter(req.payload.adapter, req.payload.refs)
            except Exception as err:  # this request's adapter only: the others go on
                req.fail(err)
        return [r for r in batch if r.open]

    def _adapter_mode(self, rows: list[Request]) -> tuple[Any, dict[str, Any]]:
        """The context to generate in, and PEFT's `adapter_names` when the rows mix adapters."""
        names = [r.payload.adapter for r in rows]
        if len(set(names)) == 1:
            return self._select(names[0]), {}
        slots = [PEFT_BASE if n == BASE else self._slots[n] for n in names]
        return nullcontext(), {"adapter_names": slots}


@dataclass(frozen=True)
class _Job:
    """What the batch runner needs of a request besides its prompt."""

    adapter: str
    refs: dict[str, AdapterRef] | None
    settings: GenerationSettings


def _drop_mixed_batch_hooks(model: Any) -> None:
    """PEFT adds its `adapter_names` hooks around generate() without a `finally`: after a
    mixed batch that failed they would stay and hand later rows to stale adapter names."""
    from peft.tuners.lora.model import _adapter_names_pre_forward_hook

    for module in model.modules():
        hooks = module._forward_pre_hooks
        stale = [
            k
            for k, h in hooks.items()
            if getattr(h, "func", None) is _adapter_names_pre_forward_hook
        ]
        for key in stale:
            del hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)
