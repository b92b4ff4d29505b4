"""Quality scoring of a dataset with core.datasets.quality, in batches, with progress.

A scoring run is a row (status, done/total, heartbeat) so any page or CLI can watch it.
`start_scoring` runs it in a child process (`python -m core.datasets.scoring RUN_ID`, its own
session, output in data_dir/logs), so a Streamlit page stays responsive and never runs work
in a thread of its own; `score_dataset` runs it in the calling process (CLI, tests).

Deduplication covers the dataset itself and the other datasets: their non-rejected samples
seed the exact and near-duplicate indexes, so a sample copied from another dataset is flagged
with `duplicate_of = "<dataset>#<sample id>"`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, bindparam, case, func, select, update

from core.audit import audited
from core.config import get_settings
from core.datasets.errors import DatasetError
from core.datasets.models import Dataset, DatasetSample, ScoringRun
from core.datasets.service import joined_text, resolve_dataset
from core.db import get_engine, reading, writing
from core.db.base import utcnow
from core.permissions import Principal, require

FETCH = 256
_T = DatasetSample.__table__
SCORE_UPDATE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"), _T.c.content_sha256 == bindparam("b_sha"))
    .values(
        {
            c: bindparam(c)
            for c in (
                "score",
                "signals",
                "reasons",
                "reason_codes",
                "flagged_spans",
                "duplicate_of",
                "token_count",
                "scored_at",
                "minhash",
            )
        }
    )
)
STALE_AFTER = timedelta(minutes=2)
ACTIVE = ("queued", "running", "cancelling")


class ScoringRunInfo(BaseModel):
    id: int
    dataset_id: int
    status: str
    total: int
    done: int
    error: str | None
    stats: dict[str, Any] | None
    started_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else min(self.done / self.total, 1.0)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _info(r: ScoringRun) -> ScoringRunInfo:
    return ScoringRunInfo(
        id=r.id,
        dataset_id=r.dataset_id,
        status=r.status,
        total=r.total,
        done=r.done,
        error=r.error,
        stats=r.stats,
        started_by=r.started_by,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        heartbeat_at=r.heartbeat_at,
    )


def load_tokenizer(base_model: str | None) -> Any:
    """The base model's tokenizer when configured and available locally; None otherwise
    (the quality library then counts regex tokens). Never downloads."""
    if not base_model:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except (OSError, ValueError, ImportError):
        return None


def _create_run(engine: Engine, actor: Principal, dataset_ref: int | str) -> ScoringRunInfo:
    with writing(engine) as s:
        d = resolve_dataset(s, dataset_ref)
        now = utcnow()
        # Write-lock the dataset row so two concurrent starts cannot both pass the check.
        s.execute(update(Dataset).where(Dataset.id == d.id).values(updated_at=now))
        for r in s.scalars(
            select(ScoringRun).where(ScoringRun.dataset_id == d.id, ScoringRun.status.in_(ACTIVE))
        ):
            beat = r.heartbeat_at or r.created_at
            if now - beat > STALE_AFTER:
                r.status, r.error, r.finished_at = "failed", "no heartbeat: the run died", now
            else:
                raise DatasetError(
                    f"dataset {d.name!r} is being scored already (run {r.id}, {r.done}/"
                    f"{r.total}); wait for it to finish or cancel it"
                )
        total = s.scalar(select(func.count()).where(DatasetSample.dataset_id == d.id)) or 0
        run = ScoringRun(
            dataset_id=d.id,
            status="queued",
            total=total,
            done=0,
            started_by=actor.username,
            thresholds=d.thresholds,
            created_at=now,
            heartbeat_at=now,
        )
        s.add(run)
        s.flush()
        return _info(run)


def start_scoring(engine: Engine, actor: Principal, dataset_ref: int | str) -> ScoringRunInfo:
    """Queue a scoring run and start it in a child process; returns at once."""
    with audited(engine, actor, "datasets.score", target=str(dataset_ref)) as ctx:
        require(actor, "datasets:review")
        run = _create_run(engine, actor, dataset_ref)
        ctx.detail["run_id"] = run.id
        settings = get_settings()
        logs = settings.data_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["CLARA_DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
        env["CLARA_DATA_DIR"] = str(settings.data_path)
        env.setdefault("HF_HUB_OFFLINE", "1")
        with (logs / f"scoring-{run.id}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "core.datasets.scoring", str(run.id)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        with writing(engine) as s:
            s.execute(update(ScoringRun).where(ScoringRun.id == run.id).values(pid=proc.pid))
        return run


def score_dataset(
    engine: Engine,
    actor: Principal,
    dataset_ref: int | str,
    progress: Callable[[int, int], None] | None = None,
) -> ScoringRunInfo:
    """Score in this process (CLI with a progress bar, tests); returns the finished run."""
    with audited(engine, actor, "datasets.score", target=str(dataset_ref)) as ctx:
        require(actor, "datasets:review")
        run = _create_run(engine, actor, dataset_ref)
        ctx.detail["run_id"] = run.id
        execute_run(engine, run.id, progress)
        info = get_scoring_run(engine, actor, run.id)
        if info.status == "failed":
            raise DatasetError(f"scoring failed: {info.error}")
        return info


def get_scoring_run(engine: Engine, actor: Principal, run_id: int) -> ScoringRunInfo:
    require(actor, "datasets:read")
    with reading(engine) as s:
        r = s.get(ScoringRun, run_id)
        if r is None:
            raise DatasetError(f"no scoring run {run_id}")
        return _info(r)


def latest_scoring_run(
    engine: Engine, actor: Principal, dataset_ref: int | str
) -> ScoringRunInfo | None:
    require(actor, "datasets:read")
    with reading(engine) as s:
        d = resolve_dataset(s, dataset_ref)
        r = s.scalar(
            select(ScoringRun)
            .where(ScoringRun.dataset_id == d.id)
            .order_by(ScoringRun.id.desc())
            .limit(1)
        )
        return _info(r) if r else None


def cancel_scoring(engine: Engine, actor: Principal, run_id: int) -> None:
    """Ask a run to stop after its current batch (scores written so far are kept)."""
    with audited(engine, actor, "datasets.score_cancel", target=str(run_id)):
        require(actor, "datasets:review")
        with writing(engine) as s:
            s.execute(
                update(ScoringRun)
                .where(ScoringRun.id == run_id, ScoringRun.status.in_(("queued", "running")))
                .values(status="cancelling")
            )


def _iter_samples(engine: Engine, dataset_id: int) -> Iterator[tuple[int, str, str]]:
    """(id, content sha, joined text) in keyset pages; rejected samples last so they never
    become the representative of a duplicate cluster."""
    rejected_last = case((DatasetSample.status == "rejected", 1), else_=0)
    last = (-1, -1)
    while True:
        with reading(engine) as s:
            rows = s.execute(
                select(
                    rejected_last.label("rl"),
                    DatasetSample.id,
                    DatasetSample.kind,
                    DatasetSample.text,
                    DatasetSample.messages,
                    DatasetSample.system,
                    DatasetSample.content_sha256,
                )
                .where(DatasetSample.dataset_id == dataset_id)
                .where(
                    (rejected_last > last[0])
                    | ((rejected_last == last[0]) & (DatasetSample.id > last[1]))
                )
                .order_by(rejected_last, DatasetSample.id)
                .limit(FETCH)
            ).all()
        if not rows:
            return
        for _rl, sid, kind, text, messages, system, sha in rows:
            yield sid, sha, joined_text(kind, text, messages, system)
        last = (rows[-1][0], rows[-1][1])


def minhash_key(t: Any) -> str:
    """The MinHash parameters a stored signature was made with (reusable only if equal)."""
    return f"{t.num_perm}:{t.minhash_ngram}:{t.minhash_seed}:{t.minhash_hash}"


def _reference(
    engine: Engine, dataset_id: int, key: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, bytes]]]:
    """Other datasets' non-rejected samples for the dedup indexes: stored content hashes and
    MinHash signatures where a compatible earlier run left them, the text otherwise."""
    texts, hashes, sigs = [], [], []
    with reading(engine) as s:
        for name, sid, kind, text, messages, system, minhash, signals in s.execute(
            select(
                Dataset.name,
                DatasetSample.id,
                DatasetSample.kind,
                DatasetSample.text,
                DatasetSample.messages,
                DatasetSample.system,
                DatasetSample.minhash,
                DatasetSample.signals,
            )
            .join(Dataset, Dataset.id == DatasetSample.dataset_id)
            .where(DatasetSample.dataset_id != dataset_id, DatasetSample.status != "rejected")
            .order_by(DatasetSample.id)
        ):
            rid = f"{name}#{sid}"
            if (
                minhash
                and signals
                and signals.get("minhash_key") == key
                and signals.get("content_hash")
            ):
                hashes.append((rid, signals["content_hash"]))
                sigs.append((rid, bytes(minhash)))
            else:
                texts.append((rid, joined_text(kind, text, messages, system)))
    return texts, hashes, sigs


def execute_run(
    engine: Engine, run_id: int, progress: Callable[[int, int], None] | None = None
) -> None:
    """Do the work of one run (in whatever process calls it); never raises for run errors,
    which are recorded on the run row instead."""
    from core.datasets.quality import QualityPipeline, QualityThresholds, default_steps

    with writing(engine) as s:
        run = s.get(ScoringRun, run_id)
        if run is None or run.status != "queued":
            return
        run.status, run.started_at, run.heartbeat_at, run.pid = (
            "running",
            utcnow(),
            utcnow(),
            os.getpid(),
        )
        dataset_id, total = run.dataset_id, run.total
        thresholds = QualityThresholds.from_dict(run.thresholds or {})
    try:
        base_model = get_settings().base_model
        tokenizer = load_tokenizer(base_model)
        key = minhash_key(thresholds)
        texts, hashes, sigs = _reference(engine, dataset_id, key)
        steps = default_steps(
            tokenizer=tokenizer,
            reference=texts,
            reference_hashes=hashes,
            reference_signatures=sigs,
            keep_signatures=True,
        )
        pipeline = QualityPipeline(steps, thresholds, batch_size=FETCH)
        shas: dict[str, str] = {}

        def inputs() -> Iterator[tuple[str, str]]:
            for sid, sha, text in _iter_samples(engine, dataset_id):
                shas[str(sid)] = sha
                yield str(sid), text

        done = 0
        pending: list[Any] = []

        def flush() -> bool:
            nonlocal done, pending
            now = utcnow()
            params = []
            for res in pending:
                reasons = list(res.reasons)
                params.append(
                    {
                        "b_id": int(res.id),
                        "b_sha": shas.pop(res.id),
                        "score": float(res.score),
                        "signals": (
                            {**res.signals, "minhash_key": key}
                            if res.signature
                            else dict(res.signals)
                        ),
                        "minhash": res.signature,
                        "reasons": reasons,
                        "reason_codes": "," + ",".join(reasons) + "," if reasons else "",
                        "flagged_spans": [list(sp) for sp in res.flagged_spans],
                        "duplicate_of": res.duplicate_of,
                        "token_count": int(res.signals.get("tokens", 0) or 0),
                        "scored_at": now,
                    }
                )
            with writing(engine) as s:
                if params:
                    # One executemany per batch; an edit made while scoring wins (the content
                    # hash no longer matches, so its stale score is not written).
                    s.connection().execute(SCORE_UPDATE, params)
                done += len(pending)
                pending = []
                r = s.get(ScoringRun, run_id)
                r.done, r.heartbeat_at = done, now
                r.total = max(r.total, done)  # samples added while scoring
                stop = r.status == "cancelling"
            if progress:
                progress(done, total)
            return stop

        cancelled = False
        for res in pipeline.run(inputs()):
            pending.append(res)
            if len(pending) >= FETCH and flush():
                cancelled = True
                break
        if pending and not cancelled:
            cancelled = flush()
        with writing(engine) as s:
            r = s.get(ScoringRun, run_id)
            r.status = "cancelled" if cancelled else "done"
            r.stats = {
                "pipeline": pipeline.stats(),
                "tokenizer": f"base model {base_model}" if tokenizer else "regex (fallback)",
            }
            r.finished_at = r.heartbeat_at = utcnow()
    except Exception as err:  # recorded on the run so the page can show it
        with writing(engine) as s:
            r = s.get(ScoringRun, run_id)
            r.status, r.finished_at = "failed", utcnow()
            r.error = f"{type(err).__name__}: {err}"[:2000]


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m core.datasets.scoring RUN_ID", file=sys.stderr)
        return 2
    engine = get_engine(get_settings())
    execute_run(engine, int(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
