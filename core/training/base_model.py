"""One loading path for base models: local folders, model ids (from the local HF cache) and
the demo model. Also the fingerprint that ties an adapter to the exact base it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Settings, get_settings
from core.errors import NotFound

if TYPE_CHECKING:
    from core.training.spec import QuantizationSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


class BaseModelNotFound(NotFound):
    pass


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True", "yes")


DEMO = "demo"  # a base model reference meaning "the demo model of this data dir"


def resolve_base_model(
    ref: str | Settings | None = None,
    settings: Settings | None = None,
    *,
    progress: Callable[[str, float], None] | None = None,
) -> str:
    """The one place that interprets a base model reference: a folder or model id as it is;
    "demo" the demo model (built on first use, reporting `progress(message, fraction)`);
    empty CLARA_BASE_MODEL when set, else the demo model.

    (`resolve_base_model(settings)` still means "the configured base model".)"""
    if isinstance(ref, Settings):
        ref, settings = None, ref
    settings = settings or get_settings()
    ref = ref or settings.base_model or DEMO
    if ref != DEMO:
        return ref
    from core.training.demo_model import ensure_demo_model

    return str(ensure_demo_model(settings, progress=progress))


def built_base_model(ref: str, settings: Settings | None = None) -> str | None:
    """Like `resolve_base_model` but never builds: None while the demo model is not built."""
    if ref != DEMO:
        return ref
    from core.training.demo_model import built_demo_model

    folder = built_demo_model(settings)
    return str(folder) if folder else None


def local_model_dir(name_or_path: str) -> Path:
    """The folder holding the model's files: the path itself or its snapshot in the HF cache."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise BaseModelNotFound(
                f"base model folder {p} has no config.json; is it a "
                "transformers model saved with save_pretrained?"
            )
        return p.resolve()
    if name_or_path.startswith(("/", ".", "~")):
        raise BaseModelNotFound(f"base model folder {p} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as err:  # hub raises several error types for "not in cache"
        raise BaseModelNotFound(
            f"base model {name_or_path!r} is neither a local folder nor in the local Hugging "
            f"Face cache ({type(err).__name__}); downloads are disabled here: copy the model "
            "folder to this machine and give its path"
        ) from None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def as_quantization(value: Any) -> QuantizationSpec | None:
    """Accept a QuantizationSpec, its dict, or the shorthands '4bit' / '8bit' / 'nf4' / 'fp4'."""
    from core.training.spec import QuantizationSpec

    if value in (None, "", "none", False):
        return None
    if isinstance(value, QuantizationSpec):
        return value
    if isinstance(value, dict):
        return QuantizationSpec.model_validate(value)
    shorthand = {
        "4bit": {"bits": 4},
        "nf4": {"bits": 4, "quant_type": "nf4"},
        "fp4": {"bits": 4, "quant_type": "fp4"},
        "8bit": {"bits": 8},
    }
    if str(value).lower() in shorthand:
        return QuantizationSpec.model_validate(shorthand[str(value).lower()])
    raise ValueError(f"quantization: expected 4bit, 8bit, nf4, fp4 or a mapping (got {value!r})")


def load_base_model(
    name_or_path: str, *, quantization: QuantizationSpec | Any = None, device: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) for a local folder or model id; offline when HF_HUB_OFFLINE=1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantization = as_quantization(quantization)
    folder = local_model_dir(name_or_path)
    device = device or default_device()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if quantization is not None:
        kwargs["quantization_config"] = quantization.to_bnb()
        # "cuda": the current device (a distributed job's rank has set its own).
        kwargs["device_map"] = {"": device if device != "cuda" else torch.cuda.current_device()}
        kwargs["dtype"] = getattr(torch, quantization.compute_dtype)
    else:
        kwargs["dtype"] = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quantization is None:
        model.to(device)
    return model, tokenizer


def _file_digest(path: Path, full_limit: int = 256 * 1024 * 1024) -> str:
    """sha256 of a file; for very large weight files, of size + head + tail (fast, still
    changes whenever a retrained or different checkpoint is dropped in)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= full_limit:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(fh.read(8 << 20))
            fh.seek(-8 << 20, os.SEEK_END)
            h.update(fh.read(8 << 20))
    return h.hexdigest()


def base_model_fingerprint(name_or_path: str) -> str:
    """A hash of the config and the weight files: an adapter trained on another base differs."""
    folder = local_model_dir(name_or_path)
    h = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text())
    config.pop("_name_or_path", None)
    config.pop("transformers_version", None)
    h.update(json.dumps(config, sort_keys=True).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            h.update(f.name.encode())
            h.update(_file_digest(f).encode())
    return h.hexdigest()


def model_revision(name_or_path: str) -> str | None:
    """The HF cache snapshot commit when the model came from the hub cache."""
    folder = local_model_dir(name_or_path)
    if folder.parent.name == "snapshots":
        return folder.name
    return None


def module_names(name_or_path: str) -> tuple[str, list[str]]:
    """(architecture, names of the Linear modules) without loading any weights."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = local_model_dir(name_or_path)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    arch = (config.architectures or [type(model).__name__])[0]
    return arch, names


def check_target_modules(name_or_path: str, target_modules: Any) -> None:
    """Refuse LoRA targets that match no Linear layer of this architecture."""
    if target_modules in (None, "all-linear"):
        return
    arch, names = module_names(name_or_path)
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if isinstance(target_modules, str) and len(wanted) == 1 and not target_modules.isidentifier():
        import re

        if any(re.fullmatch(target_modules, n) for n in names):
            return
    else:
        suffixes = {n.rsplit(".", 1)[-1] for n in names}
        if any(w in suffixes or any(n.endswith("." + w) for n in names) for w in wanted):
            return
    available = sorted({n.rsplit(".", 1)[-1] for n in names})
    raise ValueError(
        f"peft.target_modules: {arch} at {name_or_path} has none of {wanted}; its linear "
        f"layers are {available} (or use 'all-linear')"
    )
