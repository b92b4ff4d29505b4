"""An int8 ONNX Runtime embedder built locally from a sentence-transformers model folder.

`CLARA_EMBEDDING_BACKEND=onnx` selects it (see `core.corpus.embedders.get_embedder`). Nothing is
downloaded: the transformer of the configured (or packaged) model is exported with
`torch.onnx.export`, fused by ONNX Runtime's transformer optimizer, and its weights are
quantized to int8 per channel (`onnxruntime.quantization.quantize_dynamic`). The model is
built once into `data_path/models/<name>-onnx-int8` (`core.artifacts.build_once`: file-locked,
staged, renamed into place) with a manifest (`core.artifacts.write_manifest`) naming the
source model and its fingerprint, so a changed source model is rebuilt.

Tokenisation, pooling and normalisation follow the source model's own sentence-transformers
modules (modules.json, sentence_bert_config.json, the pooling module's config.json): texts
are stripped (and lower-cased when `do_lower_case`), truncated to `max_seq_length`, padded per
batch, pooled over the attention mask and L2-normalised when the model has a Normalize module.
Vectors of this backend are close to, but not the same as, those of the torch backend: the
vector store records which backend filled it (see `core.corpus.vectors`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import MANIFEST, build_once, file_sha256, read_manifest, write_manifest
from core.config import Settings
from core.corpus.embedders import (
    EmbeddingUnavailable,
    QueryFirstLock,
    active_tuned_model,
    model_location,
)

log = logging.getLogger(__name__)

BACKEND = "onnx-int8"
MANIFEST_KIND = "onnx-embedder"
MODEL_FILE = "model_int8.onnx"
# 2: the manifest is core.artifacts' manifest.json (1 was clara_onnx_manifest.json).
FORMAT_VERSION = 2
# Files copied next to the ONNX model: the tokenizer and the sentence-transformers config.
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config.json",
)
_SUPPORTED_POOLING = ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens")
# sentence-transformers 6 writes `pooling_mode: mean` where older versions wrote flags.
_POOLING_NAMES = {
    "mean": "mean_tokens",
    "cls": "cls_token",
    "max": "max_tokens",
    "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}
_MODULE_TRANSFORMER = "Transformer"
_MODULE_POOLING = "Pooling"
_MODULE_NORMALIZE = "Normalize"


def _module_kind(type_name: str) -> str:
    """ "Transformer", "Pooling" or "Normalize" for sentence-transformers' own modules, under
    the module path of any version (`sentence_transformers.models.Pooling`, 6's
    `sentence_transformers.sentence_transformer.modules.pooling.Pooling`); else the name."""
    last = type_name.rsplit(".", 1)[-1]
    if type_name.startswith("sentence_transformers.") and last in (
        _MODULE_TRANSFORMER,
        _MODULE_POOLING,
        _MODULE_NORMALIZE,
    ):
        return last
    return type_name


# Sanity check of every build: int8 vectors must stay this close to the source model's.
MIN_BUILD_COSINE = 0.95
_CHECK_TEXTS = [
    "Darf ich einen Baum auf meinem Grundstück fällen?",
    "Die Hundesteuer wird jährlich im Voraus fällig.",
    "Bauen im Außenbereich ist nur ausnahmsweise zulässig (§ 35 BauGB).",
]

ProgressFn = Callable[[str], None]


class OnnxBackendUnavailable(EmbeddingUnavailable):
    """The ONNX backend cannot be used or built; the message says what to do."""


# Where and what ------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def source_name(settings: Settings) -> str:
    """A folder-friendly name of the source model (the packaged one: all-MiniLM-L6-v2, a
    tuned one switched in: tuned-<name>)."""
    if not settings.embedding_model:
        tuned = active_tuned_model(settings)
        return f"tuned-{_slug(tuned['name'])}" if tuned else "all-MiniLM-L6-v2"
    local = Path(settings.embedding_model).expanduser()
    name = local.name if local.name not in ("", "model", "models") else local.parent.name
    return _slug(name if local.exists() else settings.embedding_model.replace("/", "--"))


def onnx_model_dir(settings: Settings) -> Path:
    """Where the int8 model of the configured embedding model lives (built on first use)."""
    return settings.data_path / "models" / f"{source_name(settings)}-{BACKEND}"


def _source_dir(location: str) -> Path:
    local = Path(location).expanduser()
    if local.is_dir():
        return local.resolve()
    # A model id: only a copy already in the local Hugging Face cache can be used.
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, local_files_only=True))
    except Exception as err:
        raise OnnxBackendUnavailable(
            f"the ONNX backend needs the embedding model {location!r} as a local folder "
            f"({err.__class__.__name__}). Set CLARA_EMBEDDING_MODEL to a local "
            "sentence-transformers folder, or unset it for the packaged all-MiniLM-L6-v2."
        ) from None


def source_fingerprint(source: Path) -> str:
    """sha256 over the names and sha256 of the files that define the model's output
    (weights, config, tokenizer)."""
    h = hashlib.sha256()
    names = sorted(
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file()
        and (p.suffix in (".json", ".txt", ".safetensors", ".bin") or p.name == "vocab.txt")
        and not p.name.startswith(".")
        and p.name not in ("README.md", "data_config.json")
    )
    for name in names:
        h.update(f"{name}\0{file_sha256(source / name)}\n".encode())
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def sentence_transformers_layout(source: Path) -> dict[str, Any]:
    """Pooling mode, normalisation, max_seq_length and lower-casing from the model's own
    sentence-transformers configuration; refuses layouts this backend does not reproduce."""
    modules_file = source / "modules.json"
    if not modules_file.is_file():
        raise OnnxBackendUnavailable(
            f"{source} has no modules.json: the ONNX backend reproduces sentence-transformers "
            "models (Transformer, Pooling, Normalize) only; use CLARA_EMBEDDING_BACKEND=torch."
        )
    modules = _read_json(modules_file)
    types = [m.get("type", "") for m in modules]
    pooling_mode, normalize = None, False
    for m in modules:
        kind = _module_kind(m.get("type", ""))
        if kind == _MODULE_TRANSFORMER and m.get("path", "") in ("", "0_Transformer"):
            continue
        if kind == _MODULE_POOLING:
            cfg = _read_json(source / m["path"] / "config.json")
            prefix = "pooling_mode_"
            active = [k[len(prefix) :] for k, v in cfg.items() if k.startswith(prefix) and v]
            named = cfg.get("pooling_mode")
            if isinstance(named, str | list):
                names = [named] if isinstance(named, str) else named
                active = [_POOLING_NAMES.get(str(n), str(n)) for n in names]
            if len(active) != 1 or active[0] not in _SUPPORTED_POOLING:
                raise OnnxBackendUnavailable(
                    f"pooling {active} of {source} is not supported by the ONNX backend; "
                    "use CLARA_EMBEDDING_BACKEND=torch"
                )
            pooling_mode = active[0]
        elif kind == _MODULE_NORMALIZE:
            normalize = True
        else:
            raise OnnxBackendUnavailable(
                f"module {kind!r} of {source} is not supported by the ONNX backend (modules: "
                f"{types}); use CLARA_EMBEDDING_BACKEND=torch"
            )
    if pooling_mode is None:
        raise OnnxBackendUnavailable(f"{source} has no Pooling module; use the torch backend")
    st_cfg = source / "sentence_bert_config.json"
    st = _read_json(st_cfg) if st_cfg.is_file() else {}
    config = _read_json(source / "config.json")
    # sentence-transformers 6 keeps max_seq_length as the tokenizer's model_max_length.
    tok_cfg = source / "tokenizer_config.json"
    tok_max = _read_json(tok_cfg).get("model_max_length") if tok_cfg.is_file() else None
    tok_max = tok_max if isinstance(tok_max, int) and tok_max < 1_000_000 else None
    max_len = st.get("max_seq_length") or tok_max or config.get("max_position_embeddings", 512)
    max_len = min(int(max_len), int(config.get("max_position_embeddings", max_len)))
    return {
        "pooling": pooling_mode,
        "normalize": normalize,
        "max_seq_length": max_len,
        "do_lower_case": bool(st.get("do_lower_case", False)),
        "dimension": int(config["hidden_size"]),
        "model_type": config.get("model_type", ""),
        "num_attention_heads": int(config.get("num_attention_heads", 0)),
    }


def _require_runtime(build: bool) -> None:
    missing = []
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        missing.append("onnxruntime")
    if build:
        try:
            import onnx  # noqa: F401
        except ImportError:
            missing.append("onnx")
    if missing:
        raise OnnxBackendUnavailable(
            f"CLARA_EMBEDDING_BACKEND=onnx needs {' and '.join(missing)}, which is not "
            f"installed: `pip install {' '.join(missing)}` in the project's environment (both "
            "are dependencies of clara-workbench), or set CLARA_EMBEDDING_BACKEND=torch"
        )


# Building ------------------------------------------------------------------------------------


def _is_complete(target: Path, fingerprint: str | None) -> bool:
    manifest = read_manifest(target) or {}
    return (
        manifest.get("kind") == MANIFEST_KIND
        and manifest.get("format") == FORMAT_VERSION
        and (fingerprint is None or manifest.get("source_sha256") == fingerprint)
        and (target / MODEL_FILE).is_file()
        and (target / "tokenizer.json").is_file()
    )


def ensure_onnx_model(
    settings: Settings, *, force: bool = False, progress: ProgressFn | None = None
) -> Path:
    """The int8 model folder of the configured embedding model; built when missing, when the
    source model changed, or with `force` (file-locked: one build even across processes)."""
    _require_runtime(build=False)
    source = _source_dir(model_location(settings))
    target = onnx_model_dir(settings)
    fingerprint = source_fingerprint(source)
    if not force and _is_complete(target, fingerprint):
        return target
    _require_runtime(build=True)

    def build(staging: Path) -> None:
        try:
            build_onnx_model(source, staging, fingerprint=fingerprint, progress=progress)
        except OnnxBackendUnavailable:
            raise
        except Exception as err:
            log.exception("building the ONNX embedding model failed")
            raise OnnxBackendUnavailable(
                f"building the int8 ONNX model of {source} failed ({err.__class__.__name__}: "
                f"{err}). Set CLARA_EMBEDDING_BACKEND=torch, or retry with `clara corpus "
                "build-onnx --force` (the log has the traceback)."
            ) from err

    # Under the lock: built by another process while we waited counts as complete (unless
    # forced); a half-built folder of a killed build is removed first.
    return build_once(target, lambda t: not force and _is_complete(t, fingerprint), build)


class _TransformerOutput:
    """Wraps a Hugging Face encoder so the export sees three named tensors in, one out."""

    @staticmethod
    def wrap(model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        return Wrapped().eval()


def _export(source: Path, out: Path) -> None:
    """The transformer (not pooling: that runs in numpy) as fp32 ONNX with dynamic shapes."""
    import warnings

    import torch
    from transformers import AutoModel

    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime fuses into its own
    # Attention kernel; the SDPA path would not fuse.
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    wrapped = _TransformerOutput.wrap(model)
    sample = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about itself (deprecated in favour of dynamo, which
        # needs onnxscript and does not give ONNX Runtime's fusions a graph they match) and
        # about trace-time constants in the mask code that do not apply to equal-length masks.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (sample, torch.ones_like(sample), torch.zeros_like(sample)),
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: axes for n in [*names, "last_hidden_state"]},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def _optimize(src: Path, out: Path, layout: dict[str, Any]) -> bool:
    """ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu) for BERT-like
    encoders; other architectures are quantized unfused. True when fused."""
    if layout["model_type"] not in ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet"):
        return False
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=layout["num_attention_heads"],
        hidden_size=layout["dimension"],
    )
    opt.save_model_to_file(str(out))
    return True


def _quantize(src: Path, out: Path) -> None:
    """Dynamic int8: weights per output channel (per-tensor scales lose too much here: mean
    cosine 0.82 against the full model instead of 0.98), activations quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)  # ONNX Runtime's advice to pre-process, on the root logger
    try:
        quantize_dynamic(
            str(src),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Fused ops (Attention, SkipLayerNormalization) are not known to ONNX's shape
            # inference: their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(advice)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


def _reference_vectors(source: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def build_onnx_model(
    source: Path,
    target: Path,
    *,
    fingerprint: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Export, fuse, quantize and check; writes everything into the (existing, empty)
    folder `target`. Raises OnnxBackendUnavailable for a model this backend cannot mirror."""
    report = progress or (lambda _msg: None)
    layout = sentence_transformers_layout(source)
    # The intermediate models stay inside `target` (a staging folder when called by
    # ensure_onnx_model, which core.artifacts cleans up if the build is killed).
    work = target / ".work"
    work.mkdir()
    try:
        fp32, fused = work / "model.onnx", work / "model_fused.onnx"
        report("exporting the transformer to ONNX")
        _export(source, fp32)
        report("fusing attention and layer norms")
        is_fused = _optimize(fp32, fused, layout)
        report("quantizing weights to int8")
        _quantize(fused if is_fused else fp32, target / MODEL_FILE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in _COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    fields = {
        "format": FORMAT_VERSION,
        "backend": BACKEND,
        "source": str(source),
        "source_sha256": fingerprint or source_fingerprint(source),
        "model_file": MODEL_FILE,
        "fused": is_fused,
        "quantization": "dynamic int8, weights per channel (QInt8), activations uint8",
        **{k: layout[k] for k in ("pooling", "normalize", "max_seq_length", "do_lower_case")},
        "dimension": layout["dimension"],
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    report("checking the int8 model against the source model")
    emb = OnnxEmbedder(target, manifest=fields)
    cos = (emb.encode(_CHECK_TEXTS) * _reference_vectors(source, _CHECK_TEXTS)).sum(axis=1)
    if cos.min() < MIN_BUILD_COSINE:
        raise OnnxBackendUnavailable(
            f"the int8 ONNX model of {source} disagrees with the source model (cosine "
            f"{cos.min():.3f} < {MIN_BUILD_COSINE}); use CLARA_EMBEDDING_BACKEND=torch"
        )
    # The manifest also holds the sha256 of every file (the model's among them) and the
    # library versions that built it.
    write_manifest(target, MANIFEST_KIND, **fields, check_min_cosine=round(float(cos.min()), 4))
    return target


# Encoding ------------------------------------------------------------------------------------


class OnnxEmbedder:
    """The int8 model in ONNX Runtime; same interface as `core.corpus.embedders.Embedder`.

    `location` is the ONNX folder (so caches keyed by location never mix it with the torch
    model); `source_location` is the sentence-transformers model it was built from.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        source_location: str = "",
        manifest: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        _require_runtime(build=False)
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.manifest = manifest or _read_json(self.folder / MANIFEST)
        self.location = str(self.folder)
        self.source_location = source_location or self.manifest.get("source", "")
        self.dimension = int(self.manifest["dimension"])
        self.max_seq_length = int(self.manifest["max_seq_length"])
        self._pooling = self.manifest["pooling"]
        self._normalize = bool(self.manifest["normalize"])
        self._lower = bool(self.manifest.get("do_lower_case", False))

        tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tok.enable_truncation(max_length=self.max_seq_length)
        pad = _pad_token(self.folder)
        tok.enable_padding(pad_id=tok.token_to_id(pad) or 0, pad_token=pad)
        self._tokenizer = tok

        def session(n: int):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            # A shared machine: idle threads sleep instead of spinning on a core others need.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(
                str(self.folder / MODEL_FILE), opts, providers=["CPUExecutionProvider"]
            )

        self._session = session(threads or 0)  # 0: one per physical core
        self._make_session = session
        self._query_session = None
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = QueryFirstLock()

    @property
    def tokenizer_dir(self) -> str:
        return str(self.folder)

    def _prepare(self, texts: list[str]) -> list[str]:
        texts = [str(t).strip() for t in texts]
        return [t.lower() for t in texts] if self._lower else texts

    def _run(self, session, texts: list[str]) -> np.ndarray:
        enc = self._tokenizer.encode_batch(self._prepare(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.asarray([e.type_ids for e in enc], dtype=np.int64)
        hidden = session.run(None, feeds)[0]
        return self._pool(hidden, mask)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """sentence-transformers' Pooling (one mode) and Normalize, in numpy."""
        m = mask[..., None].astype(np.float32)
        if self._pooling == "cls_token":
            vec = hidden[:, 0]
        elif self._pooling == "max_tokens":
            vec = np.where(m > 0, hidden, -1e9).max(axis=1)
        else:
            summed = (hidden * m).sum(axis=1)
            count = np.clip(m.sum(axis=1), 1e-9, None)
            vec = summed / (np.sqrt(count) if self._pooling == "mean_sqrt_len_tokens" else count)
        vec = vec.astype(np.float32)
        if self._normalize:
            vec /= np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
        return vec

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of `texts`, in batches of similar length; the lock is taken per batch
        so a query never waits for a whole ingest's worth of chunks."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dimension), np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with self._lock.batch():
                out[idx] = self._run(self._session, [texts[i] for i in idx])
        return out

    def encode_query(self, text: str, timeout: float | None = None) -> np.ndarray:
        """One short text on one thread (a second, single-threaded session): for a handful
        of tokens, intra-op threads only add synchronisation. Waits at most `timeout`
        seconds for a running batch (EmbedderBusy)."""
        with self._lock.query(timeout):
            if self._query_session is None:
                self._query_session = self._make_session(1)
            return self._run(self._query_session, [text])[0]


def _pad_token(folder: Path) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            pad = _read_json(path).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad:
                return str(pad)
    return "[PAD]"


def load_onnx_embedder(settings: Settings, progress: ProgressFn | None = None) -> OnnxEmbedder:
    """The ONNX embedder of the configured model, building the int8 model on first use."""
    folder = ensure_onnx_model(settings, progress=progress)
    return OnnxEmbedder(folder, source_location=model_location(settings))
