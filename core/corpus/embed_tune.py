"""An embedding model adapted to the corpus: the "embed-tune" job.

The job fine-tunes the configured (or packaged) sentence-transformers model on
(pseudo-question, passage) pairs built from the corpus itself, with in-batch negatives
(`MultipleNegativesRankingLoss`, sentence-transformers' `SentenceTransformerTrainer`):

- a document's title → its first chunk,
- a heading → the chunk that holds most of the section below it,
- a chunk's first sentence → the rest of that chunk (not by default: it made dense search
  on the development questions worse),
- an accepted dataset sample whose provenance names a document (`doc_id`, and a chunk or a
  character span) → that chunk; the sample's first user message (or its text) is the
  question.

Pairs are deduplicated and shuffled with the spec's seed, so the same corpus and spec give
the same pairs. The pairs of a seeded share of the chunks are held back: before and after
training, each held-back question ranks the corpus's chunks (all of them, or the held-back
ones plus a seeded sample on a large corpus), and recall@1/5/10 and MRR@10 go into the job's
metrics and the model's record.

The model is written through core.artifacts into `data/models/embeddings/<name>` with a
manifest and registered (`embedding_models`) with its lineage: base model and fingerprint,
corpus state (documents, chunks, a sha256 over the documents), job, spec, pair counts,
validation figures. `use_embedding_model` switches the corpus to it (or back to the base)
and marks every chunk for re-embedding; search and ingest then use it, the ONNX backend
builds its int8 model from it (core.corpus.onnx_embedder keys its folder on the model).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from core.audit import audited
from core.config import Settings, get_settings
from core.corpus.embedders import (
    base_model_location,
    get_embedder,
    record_active_model,
    tuned_models_dir,
)
from core.db import reading, writing
from core.errors import ClaraError, NotFound
from core.permissions import Principal, require
from core.training.models import EmbeddingModel, TrainingJob
from core.training.spec import NAME_RE, SpecError, reject_unknown_keys

if TYPE_CHECKING:
    from core.training.handlers import JobContext

KIND = "embed-tune"
MANIFEST_KIND = "embedding-model"
SOURCES = ("titles", "headings", "sentences", "samples")
# Chosen on the development questions (bench/RESULTS.md, "Embedding model tuned on the
# corpus"): first-sentence pairs made dense search worse there, titles and headings better.
DEFAULT_SOURCES = ("titles", "headings", "samples")
BASE = "base"
RECALL_K = (1, 5, 10)
# Validation ranks the held-back questions among at most this many chunks.
MAX_VALIDATION_POOL = 2000


class EmbedTuneError(ClaraError):
    """An embed-tune request that cannot be done; the message says why and what to do."""


class EmbeddingModelNotFound(EmbedTuneError, NotFound):
    def __init__(self, ref: int | str) -> None:
        super().__init__(
            f"no tuned embedding model {ref!r}; `clara corpus embed-models` lists them"
        )


# The spec --------------------------------------------------------------------------------


class EmbedTuneSpec(BaseModel):
    """What an embed-tune job does; small CPU defaults (one epoch, batches of 16)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="name of the tuned model: a-z, 0-9, '_' and '-'")
    epochs: int = Field(default=1, ge=1, le=20)
    max_steps: int = Field(default=0, ge=0, le=100_000, description="0: as many as epochs need")
    batch_size: int = Field(default=16, ge=2, le=512, description="pairs per batch")
    learning_rate: float = Field(default=3e-5, gt=0, le=1e-2)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_seq_length: int = Field(default=256, ge=16, le=8192)
    # 1600 pairs: at most 100 steps of 16 per epoch (a manual-page corpus gives ~4300 pairs).
    max_pairs: int = Field(default=1600, ge=2, le=1_000_000, description="training pairs at most")
    validation_fraction: float = Field(default=0.1, ge=0, le=0.5)
    max_validation_pairs: int = Field(default=200, ge=0, le=10_000)
    sources: list[Literal["titles", "headings", "sentences", "samples"]] = Field(
        default_factory=lambda: list(DEFAULT_SOURCES), min_length=1
    )
    seed: int = 42
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return reject_unknown_keys(data, cls)

    @model_validator(mode="after")
    def _rules(self) -> EmbedTuneSpec:
        if not NAME_RE.match(self.name) or self.name == BASE:
            raise SpecError(
                "must be 1-64 characters of a-z, 0-9, '_' or '-', not 'base' (it becomes the "
                "tuned model's name)",
                field="name",
            )
        self.sources = list(dict.fromkeys(self.sources))
        return self


def embed_tune_spec(data: EmbedTuneSpec | dict[str, Any]) -> EmbedTuneSpec:
    """A validated spec; a SpecError names the field that is wrong."""
    if isinstance(data, EmbedTuneSpec):
        return data
    try:
        return EmbedTuneSpec.model_validate(data)
    except SpecError as err:
        raise SpecError(str(err).split(": ", 1)[-1], field=err.field) from None
    except ValidationError as err:
        errors = []
        for e in err.errors():
            fld = ".".join(str(p) for p in e["loc"])
            inner = (e.get("ctx") or {}).get("error")
            if isinstance(inner, SpecError):
                fld, msg = inner.field or fld, str(inner).split(": ", 1)[-1]
            else:
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] != "missing" and "input" in e:
                    msg += f" (got {e['input']!r})"
            errors.append({"field": fld, "message": msg, "line": None})
        raise SpecError(errors[0]["message"], field=errors[0]["field"], errors=errors) from None


# Pairs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A pseudo-question and the passage it should find; `chunk_id` is the chunk search
    should return for it (validation), `source` one of SOURCES."""

    anchor: str
    positive: str
    chunk_id: int
    doc_id: str
    source: str


@dataclass
class PairSet:
    train: list[Pair]
    validation: list[Pair]
    # Chunks validation ranks among: (chunk id, text).
    pool: list[tuple[int, str]]
    counts: dict[str, int] = field(default_factory=dict)
    documents: int = 0
    chunks: int = 0
    corpus_sha256: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "validation_pool": len(self.pool),
            "by_source": dict(self.counts),
        }


@dataclass(frozen=True)
class _Chunk:
    id: int
    index: int
    text: str
    start: int
    end: int


_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[^\W\d_]{4}[.!?])\s+(?=[„\"(]?[A-ZÄÖÜ])")
_MIN_ANCHOR, _MAX_ANCHOR = 4, 300


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def find_headings(text: str) -> list[tuple[str, int, int]]:
    """(heading, start, end) of the headings in a document's text: Markdown headings, and
    short lines that stand alone (after a blank line or a finished sentence), start with a
    capital, a digit or §, and end without a comma, colon or full stop (or with a ?)."""
    found: list[tuple[str, int, int]] = []
    pos, prev = 0, ""
    for raw in text.splitlines(keepends=True):
        line = raw.strip()
        start, pos = pos, pos + len(raw)
        md = _MD_HEADING.match(raw.rstrip("\n"))
        if md:
            found.append((_plain(md.group(1)), start, start + len(raw.rstrip())))
        elif (
            line
            and 3 <= len(line) <= 120
            and len(line.split()) <= 14
            and (not prev or prev[-1] in ".!?:)")
            and (line[0].isupper() or line[0].isdigit() or line[0] == "§")
            and (line[-1] == "?" or line[-1] not in ".,;:-–")
        ):
            found.append((_plain(line), start, start + len(raw.rstrip())))
        prev = line if line else ""
    return found


def _plain(text: str) -> str:
    """Markdown links, emphasis and heading marks out; whitespace collapsed."""
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = text.replace("**", "").replace("__", "")
    return _clean(text).lstrip("#>*- ").strip()


def split_first_sentence(text: str, *, mid_text: bool = False) -> tuple[str, str] | None:
    """(first full sentence, the rest) of a passage, or None when it has none that reads as a
    question stand-in (20-300 characters, 4+ words, ending in . ! or ?). `mid_text`: the
    passage may begin inside a sentence (a chunk after the first), so its first piece is
    skipped."""
    full = _clean(text)
    for pi, para in enumerate(re.split(r"\n\s*\n", text)):
        for si, sentence in enumerate(_SENTENCE_END.split(_clean(para))):
            if mid_text and pi == 0 and si == 0:
                continue
            plain = _plain(sentence)
            if (
                20 <= len(plain) <= _MAX_ANCHOR
                and len(plain.split()) >= 4
                and plain[-1] in ".!?"
                and (plain[0].isupper() or plain[0].isdigit() or plain[0] in "§(„")
            ):
                rest = _clean(full.replace(_clean(sentence), " ", 1))
                return (plain, rest) if len(rest) >= 40 else None
    return None


def _section_chunk(chunks: list[_Chunk], start: int, end: int) -> _Chunk | None:
    """The chunk covering most of [start, end) (the earlier one on a tie)."""
    best, best_overlap = None, 0
    for ch in chunks:
        overlap = min(ch.end, end) - max(ch.start, start)
        if overlap > best_overlap:
            best, best_overlap = ch, overlap
    return best


def _sample_question(kind: str, text: str | None, messages: list[dict[str, str]] | None) -> str:
    if messages:
        for m in messages:
            if m.get("role") == "user" and str(m.get("content", "")).strip():
                return _clean(str(m["content"]))
        return ""
    return _clean(text or "")


def _corpus(engine: Engine) -> tuple[list[tuple[str, str, int, str, str]], dict[str, list[_Chunk]]]:
    from core.corpus.models import Chunk, Document

    with reading(engine) as s:
        docs = [
            tuple(r)
            for r in s.execute(
                sa.select(
                    Document.doc_id,
                    Document.title,
                    Document.revision,
                    Document.sha256,
                    Document.text,
                ).order_by(Document.doc_id)
            )
        ]
        chunks: dict[str, list[_Chunk]] = {}
        for r in s.execute(
            sa.select(
                Chunk.doc_id,
                Chunk.id,
                Chunk.chunk_index,
                Chunk.text,
                Chunk.start_char,
                Chunk.end_char,
            ).order_by(Chunk.doc_id, Chunk.chunk_index)
        ):
            chunks.setdefault(r[0], []).append(_Chunk(r[1], r[2], r[3], r[4], r[5]))
    return docs, chunks  # type: ignore[return-value]


def _sample_pairs(engine: Engine, chunks: dict[str, list[_Chunk]]) -> list[Pair]:
    from core.datasets.models import DatasetSample

    out: list[Pair] = []
    with reading(engine) as s:
        rows = s.execute(
            sa.select(
                DatasetSample.kind,
                DatasetSample.text,
                DatasetSample.messages,
                DatasetSample.provenance,
            )
            .where(DatasetSample.status == "accepted")
            .order_by(DatasetSample.id)
        ).all()
    for kind, text, messages, prov in rows:
        prov = prov or {}
        doc_chunks = chunks.get(str(prov.get("doc_id") or ""))
        if not doc_chunks:
            continue
        question = _sample_question(kind, text, messages)[:_MAX_ANCHOR]
        if len(question) < _MIN_ANCHOR:
            continue
        target = None
        if isinstance(prov.get("chunk_index"), int):
            target = next((c for c in doc_chunks if c.index == prov["chunk_index"]), None)
        if target is None and isinstance(prov.get("start_char"), int):
            end = prov.get("end_char") if isinstance(prov.get("end_char"), int) else None
            target = _section_chunk(doc_chunks, prov["start_char"], end or prov["start_char"] + 1)
        if target is None and len(doc_chunks) == 1:
            target = doc_chunks[0]
        if target is not None:
            out.append(Pair(question, target.text, target.id, prov["doc_id"], "samples"))
    return out


def build_pairs(engine: Engine, actor: Principal, spec: EmbedTuneSpec | dict[str, Any]) -> PairSet:
    """The training and held-back validation pairs of the corpus as it is now (seeded)."""
    require(actor, "corpus:search")
    spec = embed_tune_spec(spec)
    docs, chunks = _corpus(engine)
    pairs: list[Pair] = []
    corpus_hash = hashlib.sha256()
    for doc_id, title, revision, sha, text in docs:
        corpus_hash.update(f"{doc_id}\0{revision}\0{sha}\n".encode())
        doc_chunks = chunks.get(doc_id) or []
        if not doc_chunks:
            continue
        title = _plain(title or "")
        if "titles" in spec.sources and _MIN_ANCHOR <= len(title) <= _MAX_ANCHOR:
            pairs.append(Pair(title, doc_chunks[0].text, doc_chunks[0].id, doc_id, "titles"))
        if "headings" in spec.sources:
            heads = find_headings(text or "")
            for i, (head, _start, end) in enumerate(heads):
                if len(head) < _MIN_ANCHOR or head == title:
                    continue
                nxt = heads[i + 1][1] if i + 1 < len(heads) else len(text)
                target = _section_chunk(
                    doc_chunks, end, min(nxt, end + 600) if nxt > end else end + 1
                )
                if target is not None:
                    pairs.append(Pair(head, target.text, target.id, doc_id, "headings"))
        if "sentences" in spec.sources:
            for ch in doc_chunks:
                split = split_first_sentence(ch.text, mid_text=ch.index > 0)
                if split is not None:
                    pairs.append(Pair(split[0], split[1], ch.id, doc_id, "sentences"))
    if "samples" in spec.sources:
        pairs.extend(_sample_pairs(engine, chunks))

    # Dedup: one pair per (question, chunk); the first source in the order above wins.
    seen: set[tuple[str, int]] = set()
    unique: list[Pair] = []
    for p in pairs:
        key = (p.anchor.casefold(), p.chunk_id)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    rng = random.Random(spec.seed)
    rng.shuffle(unique)

    # Hold back the pairs of a seeded share of the chunks (all pairs of a chunk together).
    chunk_ids = sorted({p.chunk_id for p in unique})
    rng.shuffle(chunk_ids)
    want = min(spec.max_validation_pairs, int(len(unique) * spec.validation_fraction))
    held: set[int] = set()
    n_held = 0
    by_chunk: dict[int, int] = {}
    for p in unique:
        by_chunk[p.chunk_id] = by_chunk.get(p.chunk_id, 0) + 1
    for cid in chunk_ids:
        if n_held >= want or len(unique) - n_held - by_chunk[cid] < 2:
            break
        held.add(cid)
        n_held += by_chunk[cid]
    validation = [p for p in unique if p.chunk_id in held]
    train = [p for p in unique if p.chunk_id not in held][: spec.max_pairs]
    counts: dict[str, int] = {}
    for p in train + validation:
        counts[p.source] = counts.get(p.source, 0) + 1

    all_chunks = [(c.id, c.text) for cs in chunks.values() for c in cs]
    if len(all_chunks) > MAX_VALIDATION_POOL:
        needed = {p.chunk_id for p in validation}
        rest = [c for c in all_chunks if c[0] not in needed]
        random.Random(spec.seed + 1).shuffle(rest)
        pool = [c for c in all_chunks if c[0] in needed]
        pool += rest[: max(0, MAX_VALIDATION_POOL - len(pool))]
    else:
        pool = all_chunks
    return PairSet(
        train=train,
        validation=validation,
        pool=pool if validation else [],
        counts=counts,
        documents=len(docs),
        chunks=len(all_chunks),
        corpus_sha256=corpus_hash.hexdigest(),
    )


# Validation ------------------------------------------------------------------------------


def retrieval_figures(
    encode: Callable[[list[str]], Any], validation: list[Pair], pool: list[tuple[int, str]]
) -> dict[str, float]:
    """recall@1/5/10 and MRR@10 of the validation questions among the pool's chunks."""
    import numpy as np

    if not validation or not pool:
        return {}
    ids = np.asarray([c[0] for c in pool])
    docs = np.asarray(encode([c[1] for c in pool]), dtype=np.float32)
    queries = np.asarray(encode([p.anchor for p in validation]), dtype=np.float32)
    scores = queries @ docs.T
    order = np.argsort(-scores, axis=1)[:, : max(RECALL_K)]
    hits = {k: 0 for k in RECALL_K}
    rr = 0.0
    for row, p in zip(order, validation, strict=True):
        ranked = list(ids[row])
        if p.chunk_id in ranked:
            rank = ranked.index(p.chunk_id) + 1
            rr += 1.0 / rank
            for k in RECALL_K:
                hits[k] += rank <= k
    n = len(validation)
    out = {f"recall@{k}": round(hits[k] / n, 4) for k in RECALL_K}
    out["mrr@10"] = round(rr / n, 4)
    return out


# Training --------------------------------------------------------------------------------


@dataclass
class TuneResult:
    model_dir: Path | None
    metrics: dict[str, Any]
    stopped: bool = False


def _encoder(model: Any) -> Callable[[list[str]], Any]:
    def encode(texts: list[str]) -> Any:
        return model.encode(
            texts,
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    return encode


def train_embedding_model(
    spec: EmbedTuneSpec,
    pairs: PairSet,
    base: str,
    work_dir: Path,
    out_dir: Path,
    *,
    metric: Callable[[dict[str, Any]], None] = lambda _row: None,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = lambda _msg: None,
) -> TuneResult:
    """Fine-tune `base` on the training pairs (in-batch negatives) on the CPU and save it
    into `out_dir` (an existing empty folder); validation figures before and after."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    threads = get_settings().train_threads or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    started = time.monotonic()
    model = SentenceTransformer(base, device="cpu")
    model.max_seq_length = min(spec.max_seq_length, model.max_seq_length or spec.max_seq_length)
    log(
        f"base model {base}; {len(pairs.train)} training pairs, {len(pairs.validation)} held "
        f"back (ranked among {len(pairs.pool)} chunks); {threads} threads"
    )
    metrics: dict[str, Any] = {"pairs": pairs.summary()}
    before = retrieval_figures(_encoder(model), pairs.validation, pairs.pool)
    if before:
        metrics["validation_before"] = before
        metric({"phase": "eval_before", "step": 0, "extra": before})
        log(f"validation before: {before}")
    if stop():
        return TuneResult(None, metrics, stopped=True)

    data = Dataset.from_dict(
        {"anchor": [p.anchor for p in pairs.train], "positive": [p.positive for p in pairs.train]}
    )

    class Report(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            progress(state.global_step, state.max_steps)
            if stop():
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                metric(
                    {
                        "phase": "train",
                        "step": state.global_step,
                        "epoch": state.epoch,
                        "loss": float(logs["loss"]),
                        "learning_rate": logs.get("learning_rate"),
                        "grad_norm": logs.get("grad_norm"),
                    }
                )

    per_epoch = -(-len(pairs.train) // spec.batch_size)
    total_steps = spec.max_steps or spec.epochs * per_epoch
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_ratio,  # a float below 1: a share of the steps (v5)
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(1, min(10, total_steps // 5)),
        report_to="none",
        use_cpu=True,
        seed=spec.seed,
        data_seed=spec.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[Report()],
    )
    out = trainer.train()
    steps = int(trainer.state.global_step)
    if stop():
        return TuneResult(None, metrics, stopped=True)
    train_seconds = time.monotonic() - started
    metrics.update(
        {
            "steps": steps,
            "train_loss": round(float(out.training_loss), 5),
            "train_seconds": round(train_seconds, 1),
        }
    )
    after = retrieval_figures(_encoder(model), pairs.validation, pairs.pool)
    if after:
        metrics["validation_after"] = after
        metric({"phase": "eval_after", "step": steps, "extra": after})
        log(f"validation after: {after}")
    model.save(str(out_dir))
    metrics["seconds"] = round(time.monotonic() - started, 1)
    return TuneResult(out_dir, metrics)


# Submitting and the job ------------------------------------------------------------------


def submit_embed_tune(
    engine: Engine,
    actor: Principal,
    spec: EmbedTuneSpec | dict[str, Any],
    settings: Settings | None = None,
) -> int:
    """Queue an "embed-tune" job for `clara worker`; checks the spec, the name and that the
    corpus has chunks first. Returns the job id."""
    from core.training.jobs import job_log_path, jobs_root
    from core.training.queue import enqueue_job

    settings = settings or get_settings()
    spec = embed_tune_spec(spec)
    with audited(engine, actor, "corpus.embed_tune", target=spec.name) as audit:
        require(actor, "training:create")
        require(actor, "corpus:search")
        with reading(engine) as s:
            if s.scalar(sa.select(EmbeddingModel.id).where(EmbeddingModel.name == spec.name)):
                raise SpecError(
                    "a tuned embedding model of this name exists already; choose another",
                    field="name",
                )
            taken = s.scalar(
                sa.select(TrainingJob.id).where(
                    TrainingJob.kind == KIND,
                    TrainingJob.name == spec.name,
                    TrainingJob.state.in_(("queued", "running")),
                )
            )
            if taken:
                raise SpecError(f"job {taken} is tuning a model of this name already", field="name")
            from core.corpus.models import Chunk

            if not s.scalar(sa.select(sa.func.count()).select_from(Chunk)):
                raise EmbedTuneError("the corpus has no chunks to tune on; ingest documents first")
        job_id = enqueue_job(
            engine,
            kind=KIND,
            name=spec.name,
            owner=actor.username,
            spec=spec.model_dump(mode="json"),
            base_model=base_model_location(settings),
            log_path=lambda jid: str(job_log_path(settings, jid)),
            output_dir=lambda jid: str(jobs_root(settings) / str(jid)),
        )
        audit.detail["job_id"] = job_id
    return job_id


def run_embed_tune_job(ctx: JobContext) -> int:
    """The handler of "embed-tune" jobs (core.training.handlers.HANDLERS)."""
    from core.artifacts import staged_dir, write_manifest
    from core.corpus.onnx_embedder import source_fingerprint
    from core.permissions import SYSTEM
    from core.training.handlers import EXIT_OK, EXIT_STOPPED
    from core.training.queue import LeaseLost
    from core.users import principal_for

    job, lease, settings = ctx.job, ctx.lease, ctx.settings
    spec = embed_tune_spec(dict(job.spec))
    actor = principal_for(ctx.engine, job.owner) or SYSTEM
    base = job.base_model or base_model_location(settings)
    pairs = build_pairs(ctx.engine, SYSTEM, spec)
    ctx.log(f"pairs: {pairs.summary()}")
    if len(pairs.train) < 2:
        raise EmbedTuneError(
            f"only {len(pairs.train)} training pairs could be built from the corpus; "
            "ingest more documents (or allow more sources)"
        )

    def metric(row: dict[str, Any]) -> None:
        try:
            lease.metric(row, job.attempts)
        except LeaseLost:
            ctx.lost()

    final = tuned_models_dir(settings) / spec.name
    work = Path(job.output_dir or (settings.data_path / "training" / "jobs" / str(job.id)))
    work.mkdir(parents=True, exist_ok=True)
    # A stop request (cancel, worker shutdown) ends the process at once (the tracker stays in
    # its setup phase): a tuning run is short and a new attempt starts from the base model.
    try:
        with staged_dir(final, replace=True) as staging:
            result = train_embedding_model(
                spec,
                pairs,
                base,
                work,
                staging,
                metric=metric,
                progress=ctx.progress,
                stop=ctx.stop.is_set,
                log=ctx.log,
            )
            if result.stopped:
                raise _Stopped
            if not lease.held():
                ctx.lost()
            local = Path(base).expanduser()
            lineage = {
                "name": spec.name,
                "base_model": base,
                "base_model_fingerprint": source_fingerprint(local) if local.is_dir() else "",
                "job_id": job.id,
                "corpus_documents": pairs.documents,
                "corpus_chunks": pairs.chunks,
                "corpus_sha256": pairs.corpus_sha256,
                "pairs": pairs.summary(),
                "metrics": result.metrics,
                "spec": spec.model_dump(mode="json"),
            }
            manifest = write_manifest(staging, MANIFEST_KIND, **lineage)
    except _Stopped:
        return EXIT_STOPPED
    info = _register(ctx, actor, final, lineage, manifest["library_versions"])
    ctx.log(f"registered tuned embedding model {info.name!r} (id {info.id}) at {info.path}")
    lease.succeed()
    return EXIT_OK


class _Stopped(Exception):
    pass


def _register(
    ctx: JobContext,
    actor: Principal,
    final: Path,
    lineage: dict[str, Any],
    versions: dict[str, Any],
) -> EmbeddingModelInfo:
    """The registry row, written only while the job holds its lease (fenced)."""
    import shutil

    with audited(ctx.engine, actor, "corpus.embed_tune.register", target=lineage["name"]) as a:
        try:
            with writing(ctx.engine) as s:
                row = s.get(TrainingJob, ctx.job.id, with_for_update=True)
                if row is None or row.fencing_token != ctx.lease.token or row.state != "running":
                    raise EmbedTuneError(
                        f"job {ctx.job.id} no longer holds its lease; not registering its model"
                    )
                model = EmbeddingModel(
                    path=str(final),
                    library_versions=versions,
                    created_by=ctx.job.owner,
                    **lineage,
                )
                s.add(model)
                s.flush()
                info = EmbeddingModelInfo.model_validate(model)
        except IntegrityError:
            shutil.rmtree(final, ignore_errors=True)
            raise EmbedTuneError(
                f"a tuned embedding model named {lineage['name']!r} exists already"
            ) from None
        a.detail.update({"id": info.id, "job_id": ctx.job.id})
    return info


# The registry ----------------------------------------------------------------------------


class EmbeddingModelInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    path: str
    base_model: str
    base_model_fingerprint: str
    job_id: int | None
    corpus_documents: int
    corpus_chunks: int
    corpus_sha256: str
    pairs: dict[str, Any]
    metrics: dict[str, Any]
    spec: dict[str, Any]
    library_versions: dict[str, Any]
    created_by: str
    created_at: datetime
    active: bool = False


def _active_name(settings: Settings) -> str | None:
    from core.corpus.embedders import active_tuned_model

    if settings.embedding_model:
        return None
    tuned = active_tuned_model(settings)
    return tuned["name"] if tuned else None


def list_embedding_models(
    engine: Engine, actor: Principal, settings: Settings | None = None
) -> list[EmbeddingModelInfo]:
    require(actor, "adapters:read")
    active = _active_name(settings or get_settings())
    with reading(engine) as s:
        rows = s.scalars(sa.select(EmbeddingModel).order_by(EmbeddingModel.id)).all()
        out = [EmbeddingModelInfo.model_validate(r) for r in rows]
    for m in out:
        m.active = m.name == active
    return out


def get_embedding_model(
    engine: Engine, actor: Principal, ref: int | str, settings: Settings | None = None
) -> EmbeddingModelInfo:
    require(actor, "adapters:read")
    with reading(engine) as s:
        if isinstance(ref, int) or str(ref).isdigit():
            row = s.get(EmbeddingModel, int(ref))
        else:
            row = s.scalar(sa.select(EmbeddingModel).where(EmbeddingModel.name == str(ref)))
        if row is None:
            raise EmbeddingModelNotFound(ref)
        info = EmbeddingModelInfo.model_validate(row)
    info.active = info.name == _active_name(settings or get_settings())
    return info


def use_embedding_model(
    engine: Engine, actor: Principal, settings: Settings, ref: str
) -> tuple[str, int]:
    """Switch the corpus to a tuned model (`ref`: its name or id) or back to the base model
    (`ref` "base"), and mark every chunk for re-embedding (the vector store is cleared and
    records the new model). Returns (the model's identity, chunks pending). The model is
    loaded first: one that cannot load leaves the corpus as it was."""
    from core.artifacts import verify_manifest
    from core.corpus.embedders import active_tuned_model
    from core.corpus.embedding import reset_embeddings

    require(actor, "corpus:ingest")
    if settings.embedding_model:
        raise EmbedTuneError(
            f"CLARA_EMBEDDING_MODEL is set ({settings.embedding_model}) and takes precedence "
            "over tuned models; unset it to switch the corpus with --model"
        )
    with audited(engine, actor, "corpus.embedding_model", target=str(ref)) as audit:
        previous = active_tuned_model(settings)
        if ref == BASE:
            name, path = None, None
        else:
            info = get_embedding_model(engine, actor, ref, settings)
            problems = verify_manifest(Path(info.path))
            if problems:
                raise EmbedTuneError(
                    f"the files of tuned embedding model {info.name!r} at {info.path} do not "
                    f"match their manifest ({'; '.join(problems[:3])}); tune it again"
                )
            name, path = info.name, info.path
        record_active_model(settings, name, path)
        audit.detail["previous"] = previous["name"] if previous else BASE
        try:
            get_embedder(settings)  # loads (or raises EmbeddingUnavailable) before any reset
            pending = reset_embeddings(engine, actor, settings)
        except Exception:
            record_active_model(
                settings, *((previous["name"], previous["path"]) if previous else (None, None))
            )
            raise
        from core.corpus.embedders import embedding_identity

        identity = embedding_identity(settings)
        audit.detail.update({"identity": identity, "pending": pending})
    return identity, pending
