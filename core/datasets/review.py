"""The review queue: filter, sort and page samples; accept, reject, edit; bulk decisions;
statistics for the charts.

Concurrency: every decision or edit is `UPDATE ... WHERE id = ? AND row_version = ?` with the
version the reviewer saw. If someone else changed the sample in between, nothing is written
and `ReviewConflict` names who changed it and when.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine, Integer, Text, and_, case, cast, func, or_, select, update
from sqlalchemy.orm import Session

from core.audit import audited
from core.datasets.errors import DatasetError, InvalidSample, ReviewConflict, SampleNotFound
from core.datasets.models import DatasetSample
from core.datasets.service import SampleIn, content_sha256, joined_text, resolve_dataset
from core.db import reading, writing
from core.db.base import utcnow
from core.permissions import Principal, require

Decision = Literal["accepted", "rejected", "pending"]
SORTS: dict[str, str] = {
    "score_asc": "lowest score first",
    "score_desc": "highest score first",
    "id_asc": "oldest first",
    "id_desc": "newest first",
    "tokens_desc": "longest first",
    "tokens_asc": "shortest first",
    "status": "by status",
    "source": "by source",
}
MAX_PAGE = 200


class SampleFilter(BaseModel):
    status: list[str] | None = None
    reason: str | None = None
    source: str | None = None
    min_score: float | None = Field(None, ge=0, le=1)
    max_score: float | None = Field(None, ge=0, le=1)
    unscored: bool | None = None
    edited: bool | None = None
    search: str | None = None


class SampleView(BaseModel):
    id: int
    dataset_id: int
    kind: str
    text: str | None
    messages: list[dict[str, str]] | None
    system: str | None
    provenance: dict[str, Any]
    metadata: dict[str, Any]
    source: str
    status: str
    score: float | None
    signals: dict[str, Any] | None
    reasons: list[str]
    flagged_spans: list[list[Any]]
    duplicate_of: str | None
    token_count: int | None
    char_count: int
    row_version: int
    original: dict[str, Any] | None
    edited_by: str | None
    edited_at: datetime | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str
    changed_by: str
    changed_at: datetime
    created_at: datetime

    @property
    def body(self) -> str:
        return joined_text(self.kind, self.text, self.messages, self.system)


class SamplePage(BaseModel):
    items: list[SampleView]
    total: int
    offset: int
    limit: int

    def frame(self) -> pd.DataFrame:
        """A compact table of the page (one line per sample) for listings."""
        rows = []
        for v in self.items:
            preview = (
                v.text
                if v.kind == "text"
                else " | ".join(f"{m['role']}: {m['content']}" for m in v.messages or [])
                + (f" | rejected: {v.text}" if v.kind == "pref" else "")
            )
            rows.append(
                {
                    "id": v.id,
                    "status": v.status,
                    "score": v.score,
                    "reasons": ", ".join(v.reasons),
                    "source": v.source,
                    "kind": v.kind,
                    "tokens": v.token_count,
                    "edited": v.edited_by is not None,
                    "preview": (preview or "")[:160],
                }
            )
        cols = ["id", "status", "score", "reasons", "source", "kind", "tokens", "edited", "preview"]
        return pd.DataFrame(rows, columns=cols)


def _view(r: DatasetSample) -> SampleView:
    return SampleView(
        id=r.id,
        dataset_id=r.dataset_id,
        kind=r.kind,
        text=r.text,
        messages=r.messages,
        system=r.system,
        provenance=r.provenance or {},
        metadata=r.meta or {},
        source=r.source,
        status=r.status,
        score=r.score,
        signals=r.signals,
        reasons=r.reasons or [],
        flagged_spans=r.flagged_spans or [],
        duplicate_of=r.duplicate_of,
        token_count=r.token_count,
        char_count=r.char_count,
        row_version=r.row_version,
        original=r.original,
        edited_by=r.edited_by,
        edited_at=r.edited_at,
        reviewed_by=r.reviewed_by,
        reviewed_at=r.reviewed_at,
        review_note=r.review_note,
        changed_by=r.changed_by,
        changed_at=r.changed_at,
        created_at=r.created_at,
    )


def _conditions(dataset_id: int, f: SampleFilter | None) -> list[Any]:
    c: list[Any] = [DatasetSample.dataset_id == dataset_id]
    if f is None:
        return c
    if f.status:
        c.append(DatasetSample.status.in_(f.status))
    if f.reason:
        c.append(DatasetSample.reason_codes.like(f"%,{f.reason},%"))
    if f.source:
        c.append(DatasetSample.source == f.source)
    if f.min_score is not None:
        c.append(DatasetSample.score >= f.min_score)
    if f.max_score is not None:
        c.append(DatasetSample.score <= f.max_score)
    if f.unscored is True:
        c.append(DatasetSample.score.is_(None))
    elif f.unscored is False:
        c.append(DatasetSample.score.is_not(None))
    if f.edited is True:
        c.append(DatasetSample.edited_by.is_not(None))
    elif f.edited is False:
        c.append(DatasetSample.edited_by.is_(None))
    if f.search:
        pattern = f"%{f.search}%"
        # SQLite stores JSON ASCII-escaped (ü as \u00fc): match that spelling too.
        escaped = f"%{json.dumps(f.search)[1:-1]}%"
        c.append(
            or_(
                DatasetSample.text.ilike(pattern),
                cast(DatasetSample.messages, Text).ilike(pattern),
                cast(DatasetSample.messages, Text).ilike(escaped),
                DatasetSample.system.ilike(pattern),
            )
        )
    return c


def _order(sort: str) -> list[Any]:
    if sort not in SORTS:
        raise DatasetError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    unscored_last = case((DatasetSample.score.is_(None), 1), else_=0)
    return {
        "score_asc": [unscored_last, DatasetSample.score.asc(), DatasetSample.id],
        "score_desc": [unscored_last, DatasetSample.score.desc(), DatasetSample.id],
        "id_asc": [DatasetSample.id.asc()],
        "id_desc": [DatasetSample.id.desc()],
        "tokens_desc": [
            case((DatasetSample.token_count.is_(None), 1), else_=0),
            DatasetSample.token_count.desc(),
            DatasetSample.id,
        ],
        "tokens_asc": [
            case((DatasetSample.token_count.is_(None), 1), else_=0),
            DatasetSample.token_count.asc(),
            DatasetSample.id,
        ],
        "status": [DatasetSample.status, DatasetSample.id],
        "source": [DatasetSample.source, DatasetSample.id],
    }[sort]


def list_samples(
    engine: Engine,
    actor: Principal,
    dataset_ref: int | str,
    filters: SampleFilter | None = None,
    sort: str = "score_asc",
    offset: int = 0,
    limit: int = 20,
) -> SamplePage:
    """One page of the queue; filtering, sorting and paging happen in SQL."""
    require(actor, "datasets:read")
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    with reading(engine) as s:
        d = resolve_dataset(s, dataset_ref)
        conds = _conditions(d.id, filters)
        total = s.scalar(select(func.count()).select_from(DatasetSample).where(*conds)) or 0
        rows = s.scalars(
            select(DatasetSample).where(*conds).order_by(*_order(sort)).offset(offset).limit(limit)
        ).all()
        return SamplePage(items=[_view(r) for r in rows], total=total, offset=offset, limit=limit)


def _sample(s: Session, sample_id: int, dataset_ref: int | str | None) -> DatasetSample:
    """The sample; with `dataset_ref`, only if it belongs to that dataset (a caller that
    names the dataset never reaches a sample of another one)."""
    r = s.get(DatasetSample, sample_id)
    if dataset_ref is not None:
        d = resolve_dataset(s, dataset_ref)
        if r is not None and r.dataset_id != d.id:
            r = None
    if r is None:
        raise SampleNotFound(sample_id)
    return r


def get_sample(
    engine: Engine, actor: Principal, sample_id: int, dataset_ref: int | str | None = None
) -> SampleView:
    require(actor, "datasets:read")
    with reading(engine) as s:
        return _view(_sample(s, sample_id, dataset_ref))


def _guarded_update(
    s: Session, sample_id: int, expected_version: int, values: dict[str, Any]
) -> DatasetSample:
    res = s.execute(
        update(DatasetSample)
        .where(DatasetSample.id == sample_id, DatasetSample.row_version == expected_version)
        .values(row_version=DatasetSample.row_version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        cur = s.get(DatasetSample, sample_id)
        if cur is None:
            raise SampleNotFound(sample_id)
        raise ReviewConflict(sample_id, cur.changed_by, cur.changed_at, cur.status)
    row = s.get(DatasetSample, sample_id)
    s.refresh(row)
    return row


def decide(
    engine: Engine,
    actor: Principal,
    sample_id: int,
    decision: Decision,
    expected_version: int,
    note: str = "",
    dataset_ref: int | str | None = None,
) -> SampleView:
    """Accept, reject (or reset to pending) a sample the reviewer saw at `expected_version`
    (with `dataset_ref`: only a sample of that dataset)."""
    if decision not in ("accepted", "rejected", "pending"):
        raise DatasetError(f"unknown decision {decision!r}; use accepted, rejected or pending")
    with audited(
        engine,
        actor,
        "datasets.review",
        target=f"sample:{sample_id}",
        detail={"decision": decision},
    ):
        require(actor, "datasets:review")
        now = utcnow()
        with writing(engine) as s:
            if dataset_ref is not None:
                _sample(s, sample_id, dataset_ref)
            row = _guarded_update(
                s,
                sample_id,
                expected_version,
                {
                    "status": decision,
                    "review_note": note,
                    "reviewed_by": actor.username if decision != "pending" else None,
                    "reviewed_at": now if decision != "pending" else None,
                    "changed_by": actor.username,
                    "changed_at": now,
                },
            )
            return _view(row)


def edit_sample(
    engine: Engine,
    actor: Principal,
    sample_id: int,
    expected_version: int,
    *,
    text: str | None = None,
    messages: list[dict[str, str]] | None = None,
    system: str | None = None,
    decision: Decision | None = None,
    dataset_ref: int | str | None = None,
) -> SampleView:
    """Replace a sample's content. The first edit keeps the original content; who and when
    are recorded; the quality score is cleared (it described the old text). With
    `dataset_ref`: only a sample of that dataset."""
    with audited(engine, actor, "datasets.edit", target=f"sample:{sample_id}"):
        require(actor, "datasets:review")
        with writing(engine) as s:
            cur = _sample(s, sample_id, dataset_ref)
            try:
                new = SampleIn(
                    kind=cur.kind,
                    text=text if cur.kind in ("text", "pref") else None,
                    messages=messages if cur.kind in ("chat", "pref") else None,
                    system=(system or None) if cur.kind in ("chat", "pref") else None,
                )
            except ValidationError as err:
                first = err.errors()[0]
                raise InvalidSample(
                    f"sample {sample_id}: {first.get('msg', '').removeprefix('Value error, ')}"
                ) from None
            msgs = [m.model_dump() for m in new.messages] if new.messages else None
            now = utcnow()
            values: dict[str, Any] = {
                "text": new.text,
                "messages": msgs,
                "system": new.system,
                "content_sha256": content_sha256(new.kind, new.text, msgs, new.system),
                "char_count": len(joined_text(new.kind, new.text, msgs, new.system)),
                "score": None,
                "signals": None,
                "reasons": None,
                "reason_codes": "",
                "flagged_spans": None,
                "duplicate_of": None,
                "scored_at": None,
                "edited_by": actor.username,
                "edited_at": now,
                "changed_by": actor.username,
                "changed_at": now,
            }
            if cur.original is None:
                values["original"] = {
                    "text": cur.text,
                    "messages": cur.messages,
                    "system": cur.system,
                }
            if decision is not None:
                values.update(status=decision, reviewed_by=actor.username, reviewed_at=now)
            return _view(_guarded_update(s, sample_id, expected_version, values))


def bulk_decide(
    engine: Engine,
    actor: Principal,
    dataset_ref: int | str,
    decision: Decision,
    filters: SampleFilter | None = None,
) -> int:
    """Apply one decision to every sample matching the filter; returns how many changed."""
    if decision not in ("accepted", "rejected", "pending"):
        raise DatasetError(f"unknown decision {decision!r}; use accepted, rejected or pending")
    with audited(
        engine,
        actor,
        "datasets.review_bulk",
        target=str(dataset_ref),
        detail={
            "decision": decision,
            "filter": filters.model_dump(exclude_none=True) if filters else {},
        },
    ) as ctx:
        require(actor, "datasets:review")
        now = utcnow()
        with writing(engine) as s:
            d = resolve_dataset(s, dataset_ref)
            ctx.target = d.name
            conds = _conditions(d.id, filters) + [DatasetSample.status != decision]
            res = s.execute(
                update(DatasetSample)
                .where(and_(*conds))
                .values(
                    status=decision,
                    row_version=DatasetSample.row_version + 1,
                    reviewed_by=actor.username if decision != "pending" else None,
                    reviewed_at=now if decision != "pending" else None,
                    changed_by=actor.username,
                    changed_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            ctx.detail["changed"] = res.rowcount
            return int(res.rowcount)


class ReviewStats(BaseModel):
    counts: dict[str, int]
    by_source: dict[str, dict[str, int]]
    reasons: dict[str, int]
    score_histogram: list[tuple[float, float, int]]
    token_histogram: list[tuple[int, int, int]]
    reviewers: dict[str, dict[str, int]]
    scored: int
    edited: int


def review_stats(
    engine: Engine, actor: Principal, dataset_ref: int | str, bins: int = 20
) -> ReviewStats:
    """Aggregates for the charts, computed in SQL (never the samples themselves)."""
    from core.datasets.quality.reasons import ALL_REASONS

    require(actor, "datasets:read")
    with writing(engine) as s:
        d = resolve_dataset(s, dataset_ref)
        where = DatasetSample.dataset_id == d.id
        counts = {"pending": 0, "accepted": 0, "rejected": 0}
        by_source: dict[str, dict[str, int]] = {}
        for src, status, n in s.execute(
            select(DatasetSample.source, DatasetSample.status, func.count())
            .where(where)
            .group_by(DatasetSample.source, DatasetSample.status)
        ):
            counts[status] = counts.get(status, 0) + n
            by_source.setdefault(src, {})[status] = int(n)
        counts["total"] = sum(counts.values())
        reason_row = s.execute(
            select(
                *[
                    func.sum(case((DatasetSample.reason_codes.like(f"%,{r},%"), 1), else_=0))
                    for r in ALL_REASONS
                ]
            ).where(where)
        ).one()
        reasons = {r: int(n or 0) for r, n in zip(ALL_REASONS, reason_row, strict=True) if n}
        # Unknown codes (a newer library) are found by scanning only the distinct code sets.
        for (codes,) in s.execute(
            select(DatasetSample.reason_codes)
            .where(where, DatasetSample.reason_codes != "")
            .distinct()
        ):
            for code in filter(None, codes.split(",")):
                reasons.setdefault(code, 0)
        b = cast(DatasetSample.score * bins, Integer)
        hist = dict(
            s.execute(
                select(b, func.count()).where(where, DatasetSample.score.is_not(None)).group_by(b)
            ).all()
        )
        if bins in hist:  # score 1.0 belongs in the top bin
            hist[bins - 1] = hist.get(bins - 1, 0) + hist.pop(bins)
        score_hist = [(i / bins, (i + 1) / bins, int(hist.get(i, 0))) for i in range(bins)]
        max_tok = s.scalar(select(func.max(DatasetSample.token_count)).where(where)) or 0
        token_hist: list[tuple[int, int, int]] = []
        if max_tok:
            width = max(1, -(-(max_tok + 1) // bins))
            tb = DatasetSample.token_count // width
            th = dict(
                s.execute(
                    select(tb, func.count())
                    .where(where, DatasetSample.token_count.is_not(None))
                    .group_by(tb)
                ).all()
            )
            token_hist = [
                (int(k) * width, (int(k) + 1) * width, int(n)) for k, n in sorted(th.items())
            ]
        reviewers: dict[str, dict[str, int]] = {}
        for who, status, n in s.execute(
            select(DatasetSample.reviewed_by, DatasetSample.status, func.count())
            .where(where, DatasetSample.reviewed_by.is_not(None))
            .group_by(DatasetSample.reviewed_by, DatasetSample.status)
        ):
            reviewers.setdefault(who, {})[status] = int(n)
        scored = s.scalar(select(func.count()).where(where, DatasetSample.score.is_not(None)))
        edited = s.scalar(select(func.count()).where(where, DatasetSample.edited_by.is_not(None)))
        return ReviewStats(
            counts=counts,
            by_source=by_source,
            reasons=reasons,
            score_histogram=score_hist,
            token_histogram=token_hist,
            reviewers=reviewers,
            scored=int(scored or 0),
            edited=int(edited or 0),
        )


# Highlighting -----------------------------------------------------------------------------


def part_offsets(view: SampleView) -> list[tuple[str, str, int]]:
    """(role, content, start offset in the joined text) of each part the scorer saw."""
    if view.kind == "text":
        return [("text", view.text or "", 0)]
    parts = ([("system", view.system)] if view.system else []) + [
        (m["role"], m["content"]) for m in view.messages or []
    ]
    if view.kind == "pref":
        parts.append(("rejected", view.text or ""))
    out, pos = [], 0
    for role, content in parts:
        out.append((role, content, pos))
        pos += len(content) + 2  # the "\n\n" the parts were joined with
    return out


def highlight_html(text: str, spans: list[tuple[int, int, str]], offset: int = 0) -> str:
    """Escaped text with the flagged spans inside <mark title="reason">; spans are given in
    joined-text offsets and `offset` is where `text` starts there. Safe to render as HTML:
    every character of the sample goes through html.escape."""
    local = sorted(
        (max(s - offset, 0), min(e - offset, len(text)), r)
        for s, e, r in spans
        if e > offset and s < offset + len(text)
    )
    out, pos = [], 0
    for start, end, reason in local:
        if end <= pos:
            continue
        start = max(start, pos)
        out.append(html.escape(text[pos:start]))
        out.append(
            f'<mark title="{html.escape(reason, quote=True)}">{html.escape(text[start:end])}</mark>'
        )
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out).replace("\n", "<br>")
