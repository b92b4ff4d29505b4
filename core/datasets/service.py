"""Datasets and their samples: create, look up, add samples, per-dataset thresholds.

A dataset is a named, mutable collection of samples. A sample is plain text (continued
pre-training) or a conversation (role/content messages with an optional system prompt).
Other areas (Chat feedback, builders, importers) add samples through `add_samples`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine, case, func, insert, select
from sqlalchemy.orm import Session

from core.audit import audited
from core.datasets.errors import DatasetConflict, DatasetError, DatasetNotFound
from core.datasets.models import DATASET_KINDS, Dataset, DatasetSample, DatasetVersion
from core.db import reading, writing
from core.db.base import utcnow
from core.permissions import Principal, require

ROLES = ("system", "user", "assistant")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INSERT_BATCH = 500


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class SampleIn(BaseModel):
    """One sample to add. For chat samples a leading system message becomes `system`.

    A preference pair (kind "pref", for DPO) is a conversation whose last message is the
    chosen assistant answer, with the rejected answer to the same prompt in `text`."""

    kind: Literal["text", "chat", "pref"]
    text: str | None = None
    messages: list[Message] | None = None
    system: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: Literal["pending", "accepted", "rejected"] = "pending"

    @model_validator(mode="after")
    def _check_shape(self) -> SampleIn:
        if self.kind == "text":
            if not self.text or not self.text.strip():
                raise ValueError("a text sample needs a non-empty 'text'")
            if self.messages:
                raise ValueError("a text sample has no 'messages' (use kind 'chat')")
            return self
        if not self.messages:
            raise ValueError("a chat sample needs 'messages'")
        msgs = list(self.messages)
        if msgs[0].role == "system":
            if self.system is not None and self.system != msgs[0].content:
                raise ValueError("system prompt given twice (field and first message) and differs")
            self.system = msgs[0].content
            msgs = msgs[1:]
        if any(m.role == "system" for m in msgs):
            raise ValueError("a 'system' message is only allowed as the first message")
        if not any(m.role == "user" for m in msgs):
            raise ValueError("a conversation needs at least one 'user' message")
        if not any(m.role == "assistant" for m in msgs):
            raise ValueError("a conversation needs at least one 'assistant' message")
        for i, m in enumerate(msgs):
            if not m.content.strip():
                raise ValueError(f"message {i + 1} ({m.role}) is empty")
        self.messages = msgs
        if self.kind == "pref":
            if msgs[-1].role != "assistant":
                raise ValueError("a preference pair ends with the chosen assistant answer")
            if not self.text or not self.text.strip():
                raise ValueError("a preference pair needs the rejected answer in 'text'")
            if self.text.strip() == msgs[-1].content.strip():
                raise ValueError("the chosen and the rejected answer are the same")
            return self
        if self.text is not None:
            raise ValueError("a chat sample has no 'text' (put the content in messages)")
        return self


class DatasetInfo(BaseModel):
    id: int
    name: str
    description: str
    kind: str
    thresholds: dict[str, Any] | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int] = Field(default_factory=dict)
    mean_score: float | None = None
    scored: int = 0
    versions: int = 0


def _info(d: Dataset, counts: dict[str, int] | None = None, **extra: Any) -> DatasetInfo:
    return DatasetInfo(
        id=d.id,
        name=d.name,
        description=d.description,
        kind=d.kind,
        thresholds=d.thresholds,
        created_by=d.created_by,
        created_at=d.created_at,
        updated_at=d.updated_at,
        counts=counts or {},
        **extra,
    )


def check_name(name: str) -> str:
    name = name.strip()
    if not _NAME_RE.match(name):
        raise DatasetError(
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes a folder name)"
        )
    return name


def sample_content(
    kind: str, text: str | None, messages: list[dict] | None, system: str | None
) -> dict[str, Any]:
    return {"kind": kind, "text": text, "messages": messages, "system": system}


def content_sha256(
    kind: str, text: str | None, messages: list[dict] | None, system: str | None
) -> str:
    blob = json.dumps(
        sample_content(kind, text, messages, system),
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def joined_text(
    kind: str, text: str | None, messages: list[dict] | None, system: str | None
) -> str:
    """The text the quality library scores: for chats the contents joined with blank lines
    (system first), so flagged spans can be mapped back onto the messages."""
    if kind == "text":
        return text or ""
    parts = ([system] if system else []) + [m["content"] for m in messages or []]
    if kind == "pref":
        parts.append(text or "")  # the rejected answer, after the chosen one
    return "\n\n".join(parts)


def resolve_dataset(s: Session, ref: int | str) -> Dataset:
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        d = s.get(Dataset, int(ref))
        if d is None and isinstance(ref, str):
            d = s.scalar(select(Dataset).where(Dataset.name == ref))
    else:
        d = s.scalar(select(Dataset).where(Dataset.name == ref.strip()))
    if d is None:
        raise DatasetNotFound(ref)
    return d


def _create(s: Session, actor: Principal, name: str, description: str, kind: str) -> Dataset:
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; use one of {', '.join(DATASET_KINDS)}")
    if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise DatasetConflict(f"a dataset named {name!r} already exists; choose another name")
    d = Dataset(name=name, description=description, kind=kind, created_by=actor.username)
    s.add(d)
    s.flush()
    return d


def create_dataset(
    engine: Engine,
    actor: Principal,
    name: str,
    description: str = "",
    kind: str = "standard",
    thresholds: dict[str, Any] | None = None,
) -> DatasetInfo:
    with audited(engine, actor, "datasets.create", target=name) as ctx:
        require(actor, "datasets:create")
        name = check_name(name)
        if thresholds is not None:
            thresholds = _validated_thresholds(thresholds)
        with writing(engine) as s:
            d = _create(s, actor, name, description, kind)
            d.thresholds = thresholds
            ctx.detail["id"] = d.id
            return _info(d)


def get_or_create_dataset(
    engine: Engine, actor: Principal, name: str, description: str = "", kind: str = "standard"
) -> DatasetInfo:
    """The dataset of that name, created when missing (feedback datasets use this)."""
    require(actor, "datasets:create")
    name = check_name(name)
    with reading(engine) as s:
        d = s.scalar(select(Dataset).where(Dataset.name == name))
        if d is not None:
            return _info(d)
    try:
        return create_dataset(engine, actor, name, description, kind)
    except DatasetError:
        # Lost a race with a concurrent creator: the row exists now.
        with reading(engine) as s:
            d = s.scalar(select(Dataset).where(Dataset.name == name))
            if d is None:
                raise
            return _info(d)


def _counts(s: Session, dataset_ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = s.execute(
        select(
            DatasetSample.dataset_id,
            func.count(),
            func.sum(case((DatasetSample.status == "pending", 1), else_=0)),
            func.sum(case((DatasetSample.status == "accepted", 1), else_=0)),
            func.sum(case((DatasetSample.status == "rejected", 1), else_=0)),
            func.count(DatasetSample.score),
            func.avg(DatasetSample.score),
        )
        .where(DatasetSample.dataset_id.in_(dataset_ids))
        .group_by(DatasetSample.dataset_id)
    ).all()
    out: dict[int, dict[str, Any]] = {}
    for ds_id, total, pending, accepted, rejected, scored, mean in rows:
        out[ds_id] = {
            "counts": {
                "total": int(total),
                "pending": int(pending or 0),
                "accepted": int(accepted or 0),
                "rejected": int(rejected or 0),
            },
            "scored": int(scored or 0),
            "mean_score": None if mean is None else round(float(mean), 4),
        }
    versions = dict(
        s.execute(
            select(DatasetVersion.dataset_id, func.count())
            .where(DatasetVersion.dataset_id.in_(dataset_ids))
            .group_by(DatasetVersion.dataset_id)
        ).all()
    )
    for ds_id in dataset_ids:
        out.setdefault(
            ds_id,
            {
                "counts": {"total": 0, "pending": 0, "accepted": 0, "rejected": 0},
                "scored": 0,
                "mean_score": None,
            },
        )
        out[ds_id]["versions"] = int(versions.get(ds_id, 0))
    return out


def list_datasets(engine: Engine, actor: Principal, kind: str | None = None) -> list[DatasetInfo]:
    require(actor, "datasets:read")
    with reading(engine) as s:
        q = select(Dataset).order_by(Dataset.name)
        if kind:
            q = q.where(Dataset.kind == kind)
        ds = s.scalars(q).all()
        stats = _counts(s, [d.id for d in ds]) if ds else {}
        return [_info(d, **stats[d.id]) for d in ds]


def get_dataset(engine: Engine, actor: Principal, ref: int | str) -> DatasetInfo:
    require(actor, "datasets:read")
    with reading(engine) as s:
        d = resolve_dataset(s, ref)
        return _info(d, **_counts(s, [d.id])[d.id])


def _validated_thresholds(values: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from core.datasets.quality.models import QualityThresholds

    try:
        return QualityThresholds.from_dict(values).to_dict()
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "(thresholds)"
        raise DatasetError(f"invalid quality threshold {field}: {first.get('msg')}") from None


def thresholds_for(engine: Engine, actor: Principal, ref: int | str) -> dict[str, Any]:
    """The dataset's thresholds, the library defaults filled in for unset fields."""
    from core.datasets.quality.models import QualityThresholds

    info = get_dataset(engine, actor, ref)
    return QualityThresholds.from_dict(info.thresholds or {}).to_dict()


def set_thresholds(
    engine: Engine, actor: Principal, ref: int | str, values: dict[str, Any]
) -> DatasetInfo:
    with audited(engine, actor, "datasets.set_thresholds", target=str(ref)) as ctx:
        require(actor, "datasets:create")
        thresholds = _validated_thresholds(values)
        with writing(engine) as s:
            d = resolve_dataset(s, ref)
            ctx.target = d.name
            d.thresholds = thresholds
            d.updated_at = utcnow()
            return _info(d)


def reset_thresholds(engine: Engine, actor: Principal, ref: int | str) -> DatasetInfo:
    """Back to the quality library's defaults (stored as "not customised")."""
    with audited(engine, actor, "datasets.reset_thresholds", target=str(ref)) as ctx:
        require(actor, "datasets:create")
        with writing(engine) as s:
            d = resolve_dataset(s, ref)
            ctx.target = d.name
            d.thresholds = None
            d.updated_at = utcnow()
            return _info(d)


def sample_row(dataset_id: int, sample: SampleIn, actor: str) -> dict[str, Any]:
    messages = [m.model_dump() for m in sample.messages] if sample.messages else None
    body = joined_text(sample.kind, sample.text, messages, sample.system)
    now = utcnow()
    return {
        "dataset_id": dataset_id,
        "kind": sample.kind,
        "text": sample.text,
        "messages": messages,
        "system": sample.system,
        "provenance": sample.provenance,
        "meta": sample.metadata,
        "source": str(sample.provenance.get("source", "manual"))[:32],
        "status": sample.status,
        "content_sha256": content_sha256(sample.kind, sample.text, messages, sample.system),
        "char_count": len(body),
        "row_version": 1,
        "reason_codes": "",
        "review_note": "",
        "changed_by": actor,
        "changed_at": now,
        "created_at": now,
        "reviewed_by": actor if sample.status != "pending" else None,
        "reviewed_at": now if sample.status != "pending" else None,
    }


def insert_samples(s: Session, dataset_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Insert prepared rows in the caller's transaction; returns their ids in order.

    One multi-row INSERT ... RETURNING per batch (SQLAlchemy's insertmanyvalues) instead of
    ORM objects: several times faster for large imports on both engines."""
    ids: list[int] = []
    stmt = insert(DatasetSample).returning(DatasetSample.id, sort_by_parameter_order=True)
    for start in range(0, len(rows), INSERT_BATCH):
        ids.extend(s.scalars(stmt, rows[start : start + INSERT_BATCH]).all())
    return ids


def add_samples(
    engine: Engine, actor: Principal, dataset_id: int | str, samples: list[SampleIn]
) -> list[int]:
    """Add samples in one transaction; returns the new sample ids in input order."""
    with audited(engine, actor, "datasets.add_samples", target=str(dataset_id)) as ctx:
        require(actor, "datasets:create")
        with writing(engine) as s:
            d = resolve_dataset(s, dataset_id)
            ctx.target = d.name
            rows = [sample_row(d.id, smp, actor.username) for smp in samples]
            ids = insert_samples(s, d.id, rows)
            d.updated_at = utcnow()
        ctx.detail["added"] = len(ids)
        return ids


def delete_dataset(engine: Engine, actor: Principal, ref: int | str) -> None:
    """Delete a dataset and its samples; refused while frozen versions reference it."""
    with audited(engine, actor, "datasets.delete", target=str(ref)) as ctx:
        require(actor, "datasets:create")
        with writing(engine) as s:
            d = resolve_dataset(s, ref)
            ctx.target = d.name
            n = s.scalar(select(func.count()).where(DatasetVersion.dataset_id == d.id)) or 0
            if n:
                raise DatasetConflict(
                    f"dataset {d.name!r} has {n} frozen version(s) that training may reference; "
                    "it cannot be deleted"
                )
            s.delete(d)
