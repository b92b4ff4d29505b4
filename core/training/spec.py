"""The training spec: what to train, on what, how — validated before anything is queued.

`peft` and `trainer` are passed by name to PEFT `LoraConfig` and TRL `SFTConfig`. Their keys
are checked against the dataclass fields of the *installed* versions (not a copied list), so
YAML written for TRL/PEFT carries over and a typo gets the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from core.errors import ClaraError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# The runner owns these: where files go, which device, where logs go.
RUNNER_OWNED = {
    "output_dir",
    "logging_dir",
    "report_to",
    "use_cpu",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "run_name",
}
# Set by the runner from the spec itself; PEFT's own bookkeeping fields.
PEFT_OWNED = {
    "task_type",
    "peft_type",
    "base_model_name_or_path",
    "auto_mapping",
    "peft_version",
    "inference_mode",
    "revision",
}


M = TypeVar("M", bound=BaseModel)


class SpecError(ClaraError, ValueError):
    """An invalid spec; names the file, the line (when known) and the field."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        file: str | None = None,
        line: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.field, self.file, self.line = field, file, line
        # The valid name closest to a misspelt key (also in the message: "did you mean").
        self.suggestion = suggestion
        first = {"field": field, "message": message, "line": line}
        self.errors = errors or [first | ({"suggestion": suggestion} if suggestion else {})]
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")


@functools.cache
def sft_fields() -> dict[str, Any]:
    from trl import SFTConfig

    return _typed_fields(SFTConfig)


@functools.cache
def dpo_fields() -> dict[str, Any]:
    from trl import DPOConfig

    return _typed_fields(DPOConfig)


@functools.cache
def lora_fields() -> dict[str, Any]:
    from peft import LoraConfig

    return _typed_fields(LoraConfig)


def _typed_fields(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # forward refs the library never resolves: fall back to "any type"
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def closest(name: str, choices: list[str]) -> str | None:
    found = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return found[0] if found else None


def unknown_key(key: str, choices: list[str], field: str) -> SpecError:
    """The error for a key that is not one of `choices`, naming the closest as suggestion."""
    hint = closest(key, choices)
    message = f"unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
    return SpecError(message, field=field, suggestion=hint)


def reject_unknown_keys(data: Any, model: type[BaseModel], section: str = "") -> Any:
    """A spec's keys (of its top level, or of `section`) must be the model's fields; a typo
    names the closest one. For `model_validator(mode="before")` of every job spec."""
    if isinstance(data, dict):
        known = list(model.model_fields)
        for key in data:
            if key not in known:
                raise unknown_key(str(key), known, f"{section}.{key}" if section else str(key))
    return data


@functools.cache
def _adapter_for(hint: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(hint)
    except Exception:  # exotic library types (enums of callables, configs): accept as given
        return None


def _check_library_keys(
    section: str, values: dict[str, Any], fields: dict[str, Any], owned: set[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in owned:
            raise SpecError(
                "is set by the CLARA runner and may not be given in a spec",
                field=f"{section}.{key}",
            )
        if key not in fields:
            raise unknown_key(key, sorted(set(fields) - owned), f"{section}.{key}")
        adapter = _adapter_for(fields[key])
        if adapter is not None and value is not None:
            try:
                # Validate only: the user's own value (5, not 5.0) is what SFTConfig receives.
                adapter.validate_python(value, strict=False)
            except ValidationError as err:
                msg = err.errors()[0]["msg"]
                raise SpecError(f"{msg} (got {value!r})", field=f"{section}.{key}") from None
        out[key] = value
    return out


class QuantizationSpec(BaseModel):
    """bitsandbytes quantization of the frozen base model (QLoRA)."""

    model_config = ConfigDict(extra="forbid")

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"

    def to_bnb(self):
        import torch
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
        )


class ResourcesSpec(BaseModel):
    """What a job needs: GPUs per machine and machines. Above one process in all, the job
    runs under torchrun (core.training.distributed).

    `gpus` per machine (one training process each; a worker claims the job only when it has
    that many: `clara worker --gpus N`), or on CPUs `processes` per machine; times `nodes`
    machines. With `nodes` > 1 other workers join the job (the database is the
    coordinator), and every machine must see the same data dir (a shared volume): the ranks
    read the dataset version and base model there and write checkpoints there."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per machine, one process each")
    processes: int | None = Field(
        default=None, ge=1, le=64, description="training processes per machine (CPU); = gpus"
    )
    nodes: int = Field(default=1, ge=1, le=64, description="machines (workers) taking part")
    join_timeout_s: int = Field(
        default=600, ge=10, le=86_400, description="how long the machines wait for each other"
    )

    @model_validator(mode="before")
    @classmethod
    def _closest_key(cls, data: Any) -> Any:
        return reject_unknown_keys(data, cls, "resources")

    @model_validator(mode="after")
    def _one_process_per_gpu(self) -> ResourcesSpec:
        if self.gpus and self.processes is not None and self.processes != self.gpus:
            raise SpecError(
                f"one training process runs per GPU: leave processes out or set it to {self.gpus}",
                field="resources.processes",
            )
        return self

    @property
    def processes_per_node(self) -> int:
        return self.processes or self.gpus or 1

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="adapter name: a-z, 0-9, '_' and '-'")
    dataset_version: int | str = Field(description="dataset version id or 'name@vN'")
    # dpo: preference training (TRL DPOTrainer) of a new LoRA adapter, or of `adapter`.
    method: Literal["lora", "qlora", "continue", "dpo"] = "lora"
    base_model: str | None = Field(
        default=None, description="local folder or model id; CLARA_BASE_MODEL / demo when unset"
    )
    adapter: str | None = Field(default=None, description="adapter to continue (method continue)")
    priority: int = 0
    max_attempts: int = Field(default=3, ge=1, le=20)
    peft: dict[str, Any] = Field(default_factory=dict)
    trainer: dict[str, Any] = Field(default_factory=dict)
    quantization: QuantizationSpec | None = None
    resources: ResourcesSpec | None = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _closest_top_level(cls, data: Any) -> Any:
        return reject_unknown_keys(data, cls)

    @model_validator(mode="after")
    def _rules(self) -> TrainingSpec:
        if not NAME_RE.match(self.name):
            raise SpecError(
                "must be 1-64 characters of a-z, 0-9, '_' or '-' (it becomes the adapter name)",
                field="name",
            )
        if self.method == "qlora" and self.quantization is None:
            raise SpecError(
                "method qlora needs quantization settings, e.g. "
                "{bits: 4, quant_type: nf4, double_quant: true}",
                field="quantization",
            )
        if self.method in ("lora", "dpo") and self.quantization is not None:
            raise SpecError(
                "quantization is only used with method qlora (or continue)", field="quantization"
            )
        if self.method == "continue" and not self.adapter:
            raise SpecError(
                "method continue needs the name of the adapter to continue", field="adapter"
            )
        if self.method not in ("continue", "dpo") and self.adapter:
            raise SpecError("adapter is only used with method continue or dpo", field="adapter")
        self.peft = _check_library_keys("peft", self.peft, lora_fields(), PEFT_OWNED)
        fields = dpo_fields() if self.method == "dpo" else sft_fields()
        self.trainer = _check_library_keys("trainer", self.trainer, fields, RUNNER_OWNED)
        if self.adapter and self.peft:
            raise SpecError(
                f"training adapter {self.adapter!r} further keeps its LoRA settings; remove peft",
                field="peft",
            )
        return self

    @property
    def continues(self) -> bool:
        """Whether the job trains an existing adapter further (continue, or dpo from one)."""
        return bool(self.adapter)

    # Convenience views --------------------------------------------------------------
    def lora_kwargs(self) -> dict[str, Any]:
        kw = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
        kw.update(self.peft)
        return kw

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            self.model_dump(mode="json", exclude_defaults=False),
            sort_keys=False,
            allow_unicode=True,
        )


# YAML with line numbers ------------------------------------------------------------------


def _line_of(root: yaml.Node | None, field: str) -> int | None:
    node = root
    line = None
    for part in field.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if getattr(k, "value", None) == part:
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def parse_spec(text: str, *, file: str | None = None) -> TrainingSpec:
    """Parse YAML text into a TrainingSpec; every error names file, line and field."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SpecError(
            f"not valid YAML: {getattr(err, 'problem', err)}",
            file=file,
            line=mark.line + 1 if mark else None,
        ) from None
    if not isinstance(data, dict):
        raise SpecError(
            "a spec is a YAML mapping (name:, dataset_version:, method:, ...)", file=file, line=1
        )
    return spec_from_dict(data, file=file, root=root)


def spec_from_dict(
    data: dict[str, Any], *, file: str | None = None, root: yaml.Node | None = None
) -> TrainingSpec:
    return validated(TrainingSpec, data, file=file, root=root)


def validated(
    model: type[M], data: Any, *, file: str | None = None, root: yaml.Node | None = None
) -> M:
    """`model.model_validate(data)`; every error a SpecError naming file, line, field and the
    closest key (`root`: the YAML node tree the data came from, for line numbers)."""
    try:
        return model.model_validate(data)
    except SpecError as err:
        raise SpecError(
            str(err.args[0]).split(": ", 1)[-1] if err.field else str(err),
            field=err.field,
            file=file,
            line=_line_of(root, err.field),
            suggestion=err.suggestion,
        ) from None
    except ValidationError as err:
        errors = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"])
            ctx_err = (e.get("ctx") or {}).get("error")
            hint = None
            if isinstance(ctx_err, SpecError):
                field = ctx_err.field or field
                msg = str(ctx_err).split(": ", 1)[-1] if ctx_err.field else str(ctx_err)
                hint = ctx_err.suggestion
            else:
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] != "missing" and "input" in e:
                    msg += f" (got {e['input']!r})"
            entry = {"field": field, "message": msg, "line": _line_of(root, field)}
            errors.append(entry | ({"suggestion": hint} if hint else {}))
        first = errors[0]
        raise SpecError(
            first["message"],
            field=first["field"],
            file=file,
            line=first["line"],
            errors=errors,
            suggestion=first.get("suggestion"),
        ) from None


def parse_spec_json(text: str, *, file: str | None = None) -> TrainingSpec:
    """Parse JSON text into a TrainingSpec; errors name file, line and field as for YAML."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"not valid JSON: {err.msg}", file=file, line=err.lineno) from None
    if not isinstance(data, dict):
        raise SpecError(
            'a spec is a JSON object ({"name": ..., "dataset_version": ...})', file=file, line=1
        )
    try:  # JSON is YAML: its node tree gives the line of a field
        root = yaml.compose(text)
    except yaml.YAMLError:
        root = None
    return spec_from_dict(data, file=file, root=root)


@dataclasses.dataclass(frozen=True)
class SpecText:
    """A spec as it arrived (YAML or JSON text, or its bytes), parsed by whoever takes it
    only after the permission check, so a caller who may not submit learns nothing more."""

    text: str | bytes
    format: Literal["yaml", "json"] = "yaml"
    source: str | None = None  # names the text in error messages, like a file name

    def parse(self) -> TrainingSpec:
        text = self.text
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SpecError(
                    f"not UTF-8 text (byte {err.start} is {text[err.start]:#04x})",
                    file=self.source,
                ) from None
        if self.format == "json":
            return parse_spec_json(text, file=self.source)
        return parse_spec(text, file=self.source)


def load_spec(path: str | Path) -> TrainingSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"cannot read spec file: {err.strerror}", file=str(p)) from None
    return parse_spec(text, file=str(p))


def save_spec(spec: TrainingSpec, path: str | Path) -> Path:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(spec.to_yaml(), encoding="utf-8")
    tmp.replace(p)
    return p


# Presets -----------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "demo-lora": {
        "method": "lora",
        "description": (
            "LoRA on all linear layers of the demo model: 60 steps of 4 × 256 tokens. "
            "Measured on a shared 2-core CPU: about 6 s a step, so 6-7 minutes (11 under "
            "heavy load); the job view shows the ETA from the job's own pace"
        ),
        "peft": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
        "trainer": {
            "learning_rate": 2e-3,
            "max_steps": 60,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_length": 256,
            "packing": True,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 5,
            "logging_steps": 5,
            "save_steps": 20,
            "seed": 42,
        },
    },
    "demo-qlora": {
        "method": "qlora",
        "description": (
            "QLoRA: 4-bit NF4 base with double quantization, LoRA on attention: 40 steps of "
            "4 × 256 tokens; the job view shows the ETA from the job's own pace"
        ),
        "quantization": {
            "bits": 4,
            "quant_type": "nf4",
            "double_quant": True,
            "compute_dtype": "bfloat16",
        },
        "peft": {
            "r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        "trainer": {
            "learning_rate": 2e-3,
            "max_steps": 40,
            "per_device_train_batch_size": 4,
            "max_length": 256,
            "packing": True,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 4,
            "logging_steps": 5,
            "save_steps": 20,
            "seed": 42,
        },
    },
    "continue": {
        "method": "continue",
        "description": (
            "Continue training an existing adapter on a new dataset version: 30 steps of "
            "4 × 256 tokens; the job view shows the ETA from the job's own pace"
        ),
        "trainer": {
            "learning_rate": 1e-3,
            "max_steps": 30,
            "per_device_train_batch_size": 4,
            "max_length": 256,
            "packing": True,
            "logging_steps": 5,
            "save_steps": 20,
            "seed": 42,
        },
    },
    "demo-dpo": {
        "method": "dpo",
        "description": (
            "Preference training (DPO) on preference pairs from chat feedback: 30 steps of "
            "4 pairs (a step takes about twice an SFT step; the job view shows the ETA from "
            "the job's own pace); no adapter: a new LoRA adapter, or name one to improve"
        ),
        "peft": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
        "trainer": {
            "learning_rate": 5e-4,
            "max_steps": 30,
            "per_device_train_batch_size": 4,
            "max_length": 256,
            "beta": 0.1,
            "logging_steps": 5,
            "save_steps": 20,
            "seed": 42,
        },
    },
}


def preset(preset_name: str, /, **overrides: Any) -> dict[str, Any]:
    """A preset as a plain dict (merge your name, dataset_version, ... over it)."""
    if preset_name not in PRESETS:
        hint = closest(preset_name, list(PRESETS))
        did = f"; did you mean {hint!r}?" if hint else ""
        raise SpecError(
            f"unknown preset {preset_name!r}{did} (known: {', '.join(PRESETS)})", field="preset"
        )
    import copy

    data = copy.deepcopy(PRESETS[preset_name])
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def preset_yaml(preset_name: str, **overrides: Any) -> str:
    """A preset as YAML text, as the Training page's YAML editor starts it."""
    data = {k: v for k, v in preset(preset_name, **overrides).items() if k != "description"}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def merge_yaml_settings(data: dict[str, Any], text: str) -> dict[str, Any]:
    """Merge a YAML mapping of extra settings (e.g. `trainer: {weight_decay: 0.01}`) into a
    spec dict: sections merge key by key, other keys replace."""
    if not text.strip():
        return data
    try:
        more = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"not valid YAML: {getattr(err, 'problem', err)}", field="extra") from None
    if not isinstance(more, dict):
        raise SpecError(
            "must be a YAML mapping such as `trainer: {weight_decay: 0.01}`", field="extra"
        )
    out = dict(data)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out
