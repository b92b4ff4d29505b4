"""Jobs as the UI and CLI see them: submit training (with every check up front), list, show,
cancel, retry, metrics, logs. Scoring and embedding jobs are submitted by their areas
(core.datasets.scoring, core.corpus.embedding) and listed, shown and cancelled here."""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, func, select, update

from core.audit import audited
from core.config import Settings, get_settings
from core.db import reading, writing
from core.errors import ClaraError, Conflict, NotFound
from core.permissions import Principal, require
from core.training.base_model import DEMO, built_base_model
from core.training.models import FINISHED_STATES, Adapter, TrainingJob, TrainingMetric
from core.training.queue import METRIC_FIELDS, request_cancel
from core.training.spec import SpecError, SpecText, TrainingSpec, parse_spec, spec_from_dict


class TrainingError(ClaraError):
    """An expected training failure with a message meant for a person."""


class JobNotFound(TrainingError, NotFound):
    def __init__(self, job_id: int | str) -> None:
        super().__init__(f"no training job {job_id}; `clara train list` shows the jobs")


class SubmitRefused(TrainingError):
    """The spec is valid but refers to something missing or unusable."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class JobStateError(TrainingError, Conflict):
    pass


class JobInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    name: str
    owner: str
    method: str
    spec: dict[str, Any]
    base_model: str
    dataset_version_id: int | None
    state: str
    priority: int
    gpus: int = 0
    attempts: int
    max_attempts: int
    fencing_token: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested: bool
    pid: int | None
    worker_host: str | None
    step: int
    max_steps: int | None
    checkpoint: str | None
    log_path: str | None
    output_dir: str | None
    error: str | None
    failure_reason: str | None = None
    adapter_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def load_job(engine: Engine, job_id: int) -> JobInfo | None:
    """The one view of a job row (pages, CLI and the job's own process use it); no checks."""
    with reading(engine) as s:
        job = s.get(TrainingJob, job_id)
        return None if job is None else JobInfo.model_validate(job)


def jobs_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_path / "training" / "jobs"


def job_log_path(settings: Settings | None, job_id: int) -> Path:
    return (settings or get_settings()).data_path / "logs" / "training" / f"job-{job_id}.log"


# Submit ----------------------------------------------------------------------------------


def coerce_spec(spec: TrainingSpec | dict[str, Any] | str | SpecText) -> TrainingSpec:
    if isinstance(spec, TrainingSpec):
        return spec
    if isinstance(spec, dict):
        return spec_from_dict(spec)
    if isinstance(spec, SpecText):
        return spec.parse()
    return parse_spec(spec)


def preflight(
    engine: Engine, actor: Principal, spec: TrainingSpec, settings: Settings | None = None
) -> dict[str, Any]:
    """Everything a spec refers to must exist now; returns what the job row records."""
    from core.datasets.errors import VersionNotFound
    from core.datasets.versions import get_version
    from core.training.base_model import BaseModelNotFound, check_target_modules, local_model_dir

    settings = settings or get_settings()
    try:
        version = get_version(engine, actor, spec.dataset_version)
    except VersionNotFound:
        raise SubmitRefused(
            "dataset_version",
            f"no dataset version {spec.dataset_version!r}; freeze one on the Datasets page "
            "(or `clara dataset freeze NAME`) and use its id or NAME@vN",
        ) from None
    if not version.counts.get("train"):
        raise SubmitRefused(
            "dataset_version", f"{version.dataset_name}@v{version.number} has no training samples"
        )

    if spec.method == "dpo":
        from core.datasets.versions import read_version

        kinds = read_version(version, "train").column("kind").to_pylist()
        if "pref" not in kinds:
            raise SubmitRefused(
                "dataset_version",
                f"{version.dataset_name}@v{version.number} holds no preference pairs, which "
                "dpo trains on: they come from chat feedback (a corrected or a thumbs-down "
                "answer next to a better one) in the preferences-<adapter> datasets",
            )
    parent = None
    base = spec.base_model or settings.base_model or DEMO
    if spec.continues:
        from core.training.adapters import AdapterNotFound, get_adapter

        try:
            parent = get_adapter(engine, actor, spec.adapter)
        except AdapterNotFound as err:
            raise SubmitRefused("adapter", str(err)) from None
        if spec.base_model and spec.base_model != parent.base_model:
            from core.training.base_model import base_model_fingerprint

            try:
                fp = base_model_fingerprint(spec.base_model)
            except BaseModelNotFound as err:
                raise SubmitRefused("base_model", str(err)) from None
            if fp != parent.base_model_fingerprint:
                raise SubmitRefused(
                    "base_model",
                    f"adapter {parent.name!r} was trained on a "
                    "different base model; leave base_model empty to use its own",
                )
        base = parent.base_model
    if base != DEMO:
        try:
            local_model_dir(base)
        except BaseModelNotFound as err:
            raise SubmitRefused("base_model", str(err)) from None
    check_base = built_base_model(base, settings)
    if check_base and not spec.continues:
        try:
            check_target_modules(check_base, spec.lora_kwargs().get("target_modules"))
        except ValueError as err:
            raise SubmitRefused("peft.target_modules", str(err).split(": ", 1)[-1]) from None

    with reading(engine) as s:
        if s.scalar(select(Adapter.id).where(Adapter.name == spec.name)) is not None:
            raise SubmitRefused(
                "name",
                f"an adapter named {spec.name!r} already exists; choose "
                "another name or delete it (`clara adapters delete`)",
            )
        busy = s.scalar(
            select(TrainingJob.id).where(
                TrainingJob.name == spec.name,
                TrainingJob.kind == "sft",
                TrainingJob.state.in_(("queued", "running")),
            )
        )
        if busy is not None:
            raise SubmitRefused(
                "name", f"job {busy} is already training an adapter named {spec.name!r}"
            )
    return {"base_model": base, "dataset_version_id": version.id}


def submit_job(
    engine: Engine,
    actor: Principal,
    spec: TrainingSpec | dict[str, Any] | str | SpecText,
    *,
    settings: Settings | None = None,
) -> JobInfo:
    """Validate the spec and everything it names, then queue it. Nothing is queued on error.

    Text (a str is YAML; `SpecText` YAML or JSON) is parsed after the permission check."""
    with audited(engine, actor, "training.submit") as ctx:
        require(actor, "training:create")
        spec = coerce_spec(spec)
        ctx.target = spec.name
        settings = settings or get_settings()
        refs = preflight(engine, actor, spec, settings)
        max_steps = spec.trainer.get("max_steps")
        with writing(engine) as s:
            job = TrainingJob(
                kind="sft",
                name=spec.name,
                owner=actor.username,
                method=spec.method,
                spec=spec.model_dump(mode="json"),
                priority=spec.priority,
                max_attempts=spec.max_attempts,
                gpus=spec.resources.gpus if spec.resources else 0,
                max_steps=max_steps if isinstance(max_steps, int) and max_steps > 0 else None,
                **refs,
            )
            s.add(job)
            s.flush()
            job.log_path = str(job_log_path(settings, job.id))
            job.output_dir = str(jobs_root(settings) / str(job.id))
            ctx.detail["job_id"] = job.id
            return JobInfo.model_validate(job)


def submit_sleep_job(
    engine: Engine,
    actor: Principal,
    seconds: float = 0.0,
    *,
    name: str = "sleep",
    priority: int = 0,
    max_attempts: int = 3,
    settings: Settings | None = None,
) -> JobInfo:
    """A job that only sleeps: exercises queue, worker and child processes without training."""
    with audited(engine, actor, "training.submit", target=name) as ctx:
        require(actor, "training:create")
        settings = settings or get_settings()
        with writing(engine) as s:
            job = TrainingJob(
                kind="sleep",
                name=name,
                owner=actor.username,
                method="sleep",
                spec={"seconds": float(seconds)},
                priority=priority,
                max_attempts=max_attempts,
            )
            s.add(job)
            s.flush()
            job.log_path = str(job_log_path(settings, job.id))
            job.output_dir = str(jobs_root(settings) / str(job.id))
            ctx.detail["job_id"] = job.id
            return JobInfo.model_validate(job)


# Read --------------------------------------------------------------------------------------


def list_jobs(
    engine: Engine,
    actor: Principal,
    states: list[str] | tuple[str, ...] | None = None,
    *,
    limit: int = 100,
    offset: int = 0,
    kind: str | None = None,
) -> list[JobInfo]:
    require(actor, "training:read")
    with reading(engine) as s:
        q = select(TrainingJob)
        if states:
            q = q.where(TrainingJob.state.in_(list(states)))
        if kind:
            q = q.where(TrainingJob.kind == kind)
        q = q.order_by(TrainingJob.id.desc()).offset(offset).limit(limit)
        return [JobInfo.model_validate(j) for j in s.scalars(q)]


def count_jobs(engine: Engine, actor: Principal) -> dict[str, int]:
    require(actor, "training:read")
    with reading(engine) as s:
        rows = s.execute(select(TrainingJob.state, func.count()).group_by(TrainingJob.state))
        return {state: n for state, n in rows}


def _job_id(ref: int | str) -> int:
    try:
        return int(ref)
    except (TypeError, ValueError):
        raise JobNotFound(ref) from None


def get_job(engine: Engine, actor: Principal, job_id: int | str) -> JobInfo:
    require(actor, "training:read")
    job = load_job(engine, _job_id(job_id))
    if job is None:
        raise JobNotFound(job_id)
    return job


def waiting_reason(
    engine: Engine, actor: Principal, job: JobInfo, settings: Settings | None = None
) -> str | None:
    """Why a queued job is not taken by any live worker (none runs, none takes its kind,
    none has the GPUs it needs); None when one would take it, or it is not queued."""
    require(actor, "training:read")
    if job.state != "queued":
        return None
    from core.ops.heartbeats import list_processes, why_unclaimed

    settings = settings or get_settings()
    return why_unclaimed(job.kind, job.gpus, list_processes(engine, settings.health_stale_seconds))


METRIC_COLUMNS = ["job_id", "attempt", *METRIC_FIELDS, "at"]


def metric_rows(s, job_id: int, since_id: int = 0, limit: int | None = None) -> list[dict]:
    """The job's metric rows after `since_id` as dicts (columns, id, extra), oldest first;
    no checks (callers check `training:read`)."""
    q = (
        select(TrainingMetric)
        .where(TrainingMetric.job_id == job_id, TrainingMetric.id > since_id)
        .order_by(TrainingMetric.id)
    )
    if limit is not None:
        q = q.limit(limit)
    return [
        {c: getattr(r, c) for c in METRIC_COLUMNS} | {"id": r.id, **(r.extra or {})}
        for r in s.scalars(q)
    ]


def job_metrics(
    engine: Engine, actor: Principal, job_id: int | str, since_id: int = 0
) -> pd.DataFrame:
    """The job's metric rows (all attempts), oldest first."""
    require(actor, "training:read")
    with reading(engine) as s:
        data = metric_rows(s, _job_id(job_id), since_id)
    return pd.DataFrame(data, columns=None if data else ["id", *METRIC_COLUMNS])


def finite(value: Any) -> Any:
    """`value`, or None for a float that JSON cannot carry (NaN, infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_summary(metrics: pd.DataFrame) -> dict[str, Any]:
    """What a job's metric rows come to: rows, last step, first/last/lowest training loss,
    last speed and eval loss, perplexity before/after training (None where there is none)."""

    def values(phase: str, column: str) -> list[float]:
        if not len(metrics) or column not in metrics:
            return []
        found = metrics.loc[metrics["phase"] == phase, column].dropna()
        return [finite(v.item() if hasattr(v, "item") else v) for v in found]

    def last(phase: str, column: str) -> float | None:
        found = values(phase, column)
        return found[-1] if found else None

    losses = [v for v in values("train", "loss") if v is not None]
    step = last("train", "step")
    return {
        "rows": len(metrics),
        "last_step": int(step) if step is not None else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
        "tokens_per_second": last("train", "tokens_per_second"),
        "last_eval_loss": last("eval", "eval_loss"),
        "eval_perplexity_before": last("eval_before", "eval_perplexity"),
        "eval_perplexity_after": last("eval_after", "eval_perplexity"),
    }


class JobSummary(BaseModel):
    """One job as `clara train show` and the API show it."""

    job: JobInfo
    progress: float
    eta_seconds: float | None
    metrics: dict[str, Any]
    adapter: dict[str, Any] | None  # {"id", "name"} of the adapter it produced
    waiting: str | None = None  # why no live worker takes it, while it is queued


def job_summary(engine: Engine, actor: Principal, job_id: int | str) -> JobSummary:
    """State, spec, progress, a summary of the metrics and the adapter the job produced."""
    job = get_job(engine, actor, job_id)
    metrics = job_metrics(engine, actor, job.id)
    frac, eta = job_progress(job, metrics)
    adapter = None
    if job.adapter_id is not None:
        with reading(engine) as s:
            name = s.scalar(select(Adapter.name).where(Adapter.id == job.adapter_id))
        # None once the adapter was deleted; the id stays on the job.
        adapter = {"id": job.adapter_id, "name": name}
    return JobSummary(
        job=job,
        progress=frac,
        eta_seconds=finite(eta),
        metrics=metrics_summary(metrics),
        adapter=adapter,
        waiting=waiting_reason(engine, actor, job),
    )


def _tail_lines(path: str, lines: int) -> tuple[str, int]:
    """The last `lines` lines of the log (from its last 256 KiB) and the file's size."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        data = fh.read().decode("utf-8", errors="replace")
    # Progress bars redraw with carriage returns; keep only what was last drawn.
    text_lines = [ln.rsplit("\r", 1)[-1] for ln in data.splitlines()]
    return "\n".join(text_lines[-lines:]) if lines > 0 else "", size


def job_log_tail(engine: Engine, actor: Principal, job_id: int | str, lines: int = 50) -> str:
    job = get_job(engine, actor, job_id)
    if not job.log_path or not Path(job.log_path).exists():
        return ""
    return _tail_lines(job.log_path, lines)[0]


@dataclass(frozen=True)
class LogChunk:
    """Part of a job's log: `text` from byte `offset` (None: the last lines, as drawn);
    read on from `next_offset`."""

    text: str
    offset: int | None
    next_offset: int
    size: int  # of the log file when it was read


def job_log(
    engine: Engine,
    actor: Principal,
    job_id: int | str,
    *,
    offset: int | None = None,
    tail: int = 50,
    max_bytes: int = 1 << 20,
) -> LogChunk:
    """The job's log: its last `tail` lines, or (with `offset`) up to `max_bytes` from that
    byte on, ending before a character cut in half. Following a log: read from `next_offset`
    again (the tail's `next_offset` is the end of the file)."""
    job = get_job(engine, actor, job_id)
    path = job.log_path
    if not path or not Path(path).exists():
        return LogChunk("", 0, 0, 0)
    if offset is None:
        text, size = _tail_lines(path, tail)
        return LogChunk(text, None, size, size)
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        start = min(max(offset, 0), size)
        fh.seek(start)
        data = fh.read(max_bytes)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final=False)
    undecoded = len(decoder.getstate()[0])  # the start of a character still being written
    return LogChunk(text, start, start + len(data) - undecoded, size)


def job_progress(job: JobInfo, metrics: pd.DataFrame | None = None) -> tuple[float, float | None]:
    """(fraction done, ETA in seconds or None) from the step counter and the step rate."""
    if job.state == "succeeded":
        return 1.0, 0.0
    if not job.max_steps:
        return 0.0, None
    frac = min(1.0, job.step / job.max_steps)
    eta = None
    if metrics is not None and len(metrics) >= 2 and job.state == "running":
        train = metrics[metrics["phase"] == "train"].dropna(subset=["step"])
        if job.started_at is not None and len(train):
            # Only this attempt's pace: a resumed job's earlier attempts (and the pause
            # between them) say nothing about how fast it trains now.
            train = train[pd.to_datetime(train["at"], utc=True) >= pd.Timestamp(job.started_at)]
        if len(train) >= 2:
            first, last = train.iloc[0], train.iloc[-1]
            dt = (last["at"] - first["at"]).total_seconds()
            ds = last["step"] - first["step"]
            if dt > 0 and ds > 0:
                eta = (job.max_steps - job.step) * dt / ds
    return frac, eta


def perplexity(loss: float | None) -> float | None:
    if loss is None or math.isnan(loss):
        return None
    return math.exp(min(loss, 50.0))


# Change ------------------------------------------------------------------------------------


def cancel_job(engine: Engine, actor: Principal, job_id: int | str) -> JobInfo:
    """Queued: cancelled at once. Running: the worker stops the process (checkpoint first)."""
    with audited(engine, actor, "training.cancel", target=str(job_id)):
        require(actor, "training:cancel")
        jid = _job_id(job_id)
        before = request_cancel(engine, jid)
        if before is None:
            raise JobNotFound(job_id)
        if before not in ("queued", "running"):
            raise JobStateError(
                f"job {jid} is {before}; only queued or running jobs can be cancelled"
            )
        return get_job(engine, actor, jid)


def retry_job(engine: Engine, actor: Principal, job_id: int | str) -> JobInfo:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    with audited(engine, actor, "training.retry", target=str(job_id)):
        require(actor, "training:cancel")
        jid = _job_id(job_id)
        with writing(engine) as s:
            job = s.get(TrainingJob, jid)
            if job is None:
                raise JobNotFound(job_id)
            if job.state not in ("failed", "cancelled"):
                raise JobStateError(
                    f"job {job.id} is {job.state}; only failed or cancelled jobs can be retried"
                )
            if job.kind == "sft" and s.scalar(select(Adapter.id).where(Adapter.name == job.name)):
                raise JobStateError(
                    f"an adapter named {job.name!r} exists now; submit under another name instead"
                )
            res = s.execute(
                update(TrainingJob)
                .where(TrainingJob.id == jid, TrainingJob.state.in_(("failed", "cancelled")))
                .values(
                    state="queued",
                    attempts=0,
                    cancel_requested=False,
                    error=None,
                    failure_reason=None,
                    finished_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if not res.rowcount:
                raise JobStateError(f"job {jid} changed state meanwhile; look again")
        return get_job(engine, actor, jid)


__all__ = [
    "DEMO",
    "FINISHED_STATES",
    "JobInfo",
    "JobNotFound",
    "JobStateError",
    "SpecError",
    "SubmitRefused",
    "TrainingError",
    "JobSummary",
    "LogChunk",
    "cancel_job",
    "count_jobs",
    "get_job",
    "job_log",
    "job_log_tail",
    "job_summary",
    "job_metrics",
    "job_progress",
    "list_jobs",
    "load_job",
    "retry_job",
    "submit_job",
    "submit_sleep_job",
]
