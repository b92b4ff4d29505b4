"""Health of an installation: every store, process, the queue, the disk and the GPUs, as
named checks that say ok, warn or fail and why (`clara admin health`, the Operations page).

A check fails when the installation cannot do its work: the database or a store does not
answer, the schema is behind the code, a process died without a clean exit (its heartbeat
is stale and nothing newer replaced it), or the data dir's disk is nearly full. It warns
where work would wait or a person should look: no live worker, queued jobs of a kind no
live worker takes, a dead process that a newer one replaced.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, func, select

from core.config import Settings, mask_url
from core.db import connect, current_revision, head_revision, reading
from core.ops.heartbeats import ProcessInfo, list_processes, why_unclaimed
from core.permissions import Principal, require
from core.system import dir_size
from core.training.models import JOB_STATES, TrainingJob

Status = Literal["ok", "warn", "fail"]
_RANK = {"ok": 0, "warn": 1, "fail": 2}
# A store that does not answer within this many seconds counts as down: health must answer.
STORE_TIMEOUT_S = 15.0
GB = 1e9


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class DiskUse:
    path: str
    data_dir_bytes: int
    free_bytes: int
    total_bytes: int
    min_free_bytes: int


@dataclass
class HealthReport:
    checks: list[Check]
    processes: list[ProcessInfo] = field(default_factory=list)
    # kind -> state -> jobs
    queue: dict[str, dict[str, int]] = field(default_factory=dict)
    disk: DiskUse | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=_RANK.__getitem__, default="ok")

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def health_report(
    engine: Engine, actor: Principal, settings: Settings, *, local_gpus: bool = True
) -> HealthReport:
    """Every check; `local_gpus` also asks torch about this machine's GPUs."""
    require(actor, "system:health")
    report = HealthReport(checks=[_database_check(engine, settings)])
    database_ok = report.checks[-1].status == "ok"
    if database_ok:
        report.checks.append(_schema_check(engine))
        if report.checks[-1].status == "ok":  # a schema behind may lack the tables read next
            _add_processes_and_queue(report, engine, settings)
    report.checks.append(_vector_check(settings))
    report.checks.append(_graph_check(engine, settings, database_ok))
    report.disk = disk_use(settings)
    report.checks.append(_disk_check(report.disk))
    if local_gpus:
        report.gpus = gpu_devices(with_free=True)
        report.checks.append(_gpu_check(report.gpus))
    return report


# Stores ------------------------------------------------------------------------------------


def _database_check(engine: Engine, settings: Settings) -> Check:
    where = mask_url(settings.effective_database_url)
    try:
        connect(engine)
    except Exception as err:  # any failure is the answer
        return Check("database", "fail", str(err).splitlines()[0])
    return Check("database", "ok", f"reachable: {where}")


def _schema_check(engine: Engine) -> Check:
    current, head = current_revision(engine), head_revision()
    if current == head:
        return Check("schema", "ok", f"at the newest revision {head}")
    return Check(
        "schema", "fail", f"at {current or '(empty)'}, newest is {head}: run `clara db upgrade`"
    )


def _answered(probe: Callable[[], str], timeout: float = STORE_TIMEOUT_S) -> tuple[bool, str]:
    """Run `probe` in a daemon thread: a store that hangs makes the check fail, not health."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["ok"] = probe()
        except Exception as err:  # the store's own error is the answer
            out["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__

    thread = threading.Thread(target=run, daemon=True, name="health-probe")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, f"no answer within {timeout:.0f} s"
    return ("ok" in out), out.get("ok", out.get("error", ""))


def _vector_check(settings: Settings) -> Check:
    from core.corpus.vectors import get_vector_store

    where = settings.chroma_url or f"embedded in {settings.effective_chroma_path}"

    def probe() -> str:
        return f"{where}: {get_vector_store(settings).count()} vectors"

    ok, detail = _answered(probe)
    return Check("vector store", "ok" if ok else "fail", detail if ok else f"{where}: {detail}")


def _graph_check(engine: Engine, settings: Settings, database_ok: bool) -> Check:
    from core.corpus.graph import query_store

    if not settings.graph_uri and not database_ok:
        return Check("graph store", "fail", "kept in the database, which does not answer")
    where = settings.graph_uri or "in the database"

    def probe() -> str:
        return f"{where}: {query_store(engine, settings).count_edges()} edges"

    ok, detail = _answered(probe)
    return Check("graph store", "ok" if ok else "fail", detail if ok else f"{where}: {detail}")


# Processes and queue ---------------------------------------------------------------------


def _add_processes_and_queue(report: HealthReport, engine: Engine, settings: Settings) -> None:
    report.processes = list_processes(engine, settings.health_stale_seconds)
    report.checks += _process_checks(report.processes, settings.health_stale_seconds)
    report.queue = queue_depth(engine)
    report.checks.append(_queue_check(report.queue, report.processes))
    report.checks += _gpu_checks(engine, report.processes)


def _process_check(p: ProcessInfo, stale_after: float) -> Check:
    if not p.stale:
        return Check(p.name, "ok", f"heartbeat {p.age_seconds:.0f} s ago; {describe_process(p)}")
    silent = f"no heartbeat for {p.age_seconds:.0f} s (limit {stale_after:g} s)"
    if p.replaced:
        return Check(p.name, "warn", f"{silent}; a newer {p.kind} took its place")
    return Check(p.name, "fail", f"{silent}: the process died or hangs")


def _process_checks(processes: list[ProcessInfo], stale_after: float) -> list[Check]:
    checks = [_process_check(p, stale_after) for p in processes]
    if not any(p.kind == "worker" and not p.stale for p in processes):
        checks.append(Check("workers", "warn", "no live worker: queued jobs wait"))
    return checks


def describe_process(p: ProcessInfo) -> str:
    """What a process says about itself, in a few words."""
    d = p.detail
    parts = []
    if d.get("kinds"):
        parts.append("kinds " + ",".join(d["kinds"]))
    if p.kind == "worker":
        jobs = d.get("jobs") or []
        parts.append(
            "running " + ", ".join(f"job {j['id']} ({j['kind']})" for j in jobs) if jobs else "idle"
        )
    for key in ("url", "metrics"):
        if d.get(key):
            parts.append(f"{key} {d[key]}")
    return "; ".join(parts) or "running"


def queue_depth(engine: Engine) -> dict[str, dict[str, int]]:
    """Jobs by kind and state (every state present for each kind that has jobs)."""
    with reading(engine) as s:
        rows = s.execute(
            select(TrainingJob.kind, TrainingJob.state, func.count()).group_by(
                TrainingJob.kind, TrainingJob.state
            )
        ).all()
    out: dict[str, dict[str, int]] = {}
    for kind, state, n in rows:
        out.setdefault(kind, dict.fromkeys(JOB_STATES, 0))[state] = n
    return out


def _queue_check(queue: dict[str, dict[str, int]], processes: list[ProcessInfo]) -> Check:
    taken = {
        k
        for p in processes
        if p.kind == "worker" and not p.stale
        for k in p.detail.get("kinds", [])
    }
    waiting = {kind: states["queued"] for kind, states in queue.items() if states["queued"]}
    orphaned = {kind: n for kind, n in waiting.items() if kind not in taken}
    if orphaned:
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(orphaned.items()))
        return Check("queue", "warn", f"{what} job(s) queued and no live worker takes them")
    running = sum(states["running"] for states in queue.values())
    return Check("queue", "ok", f"{sum(waiting.values())} queued, {running} running")


def _gpu_checks(engine: Engine, processes: list[ProcessInfo]) -> list[Check]:
    """Queued jobs that ask for more GPUs than any live worker has: they wait for good."""
    with reading(engine) as s:
        rows = s.execute(
            select(TrainingJob.kind, TrainingJob.gpus, func.count())
            .where(TrainingJob.state == "queued", TrainingJob.gpus > 0)
            .group_by(TrainingJob.kind, TrainingJob.gpus)
        ).all()
    checks = []
    for kind, gpus, n in rows:
        why = why_unclaimed(kind, gpus, processes)
        if why is not None and "GPU" in why:
            checks.append(Check("queue", "warn", f"{n} {kind} job(s) {why}"))
    return checks


# Disk and GPU -------------------------------------------------------------------------------


def disk_use(settings: Settings) -> DiskUse:
    path = settings.data_path
    probe = path if path.exists() else _existing_parent(path)
    usage = shutil.disk_usage(probe)
    return DiskUse(
        path=str(path),
        data_dir_bytes=dir_size(path) if path.exists() else 0,
        free_bytes=usage.free,
        total_bytes=usage.total,
        min_free_bytes=int(settings.health_min_free_gb * GB),
    )


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _disk_check(disk: DiskUse) -> Check:
    free = f"{disk.free_bytes / GB:.1f} GB free of {disk.total_bytes / GB:.1f} GB"
    if disk.free_bytes < disk.min_free_bytes:
        return Check(
            "disk",
            "fail",
            f"{free} on the data dir's disk, under CLARA_HEALTH_MIN_FREE_GB="
            f"{disk.min_free_bytes / GB:g}",
        )
    return Check("disk", "ok", f"{free}; the data dir holds {disk.data_dir_bytes / GB:.2f} GB")


def _nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def gpu_devices(*, with_free: bool = False) -> list[dict[str, Any]]:
    """This machine's CUDA GPUs: index, name, total (and with `with_free`, free) bytes.

    torch is imported only where an NVIDIA driver is installed (elsewhere the answer is
    none, at no cost). `with_free` asks the driver, which makes a CUDA context in this
    process: fine for a command that exits, not for a worker that lives on (its jobs
    would lose that memory)."""
    if not _nvidia_driver():
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            device = {"index": i, "name": props.name, "total_bytes": int(props.total_memory)}
            if with_free:
                device["free_bytes"] = int(torch.cuda.mem_get_info(i)[0])
            out.append(device)
        return out
    except Exception:  # a broken driver or library is "no usable GPU" here
        return []


def describe_gpus(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "none"
    return "; ".join(
        f"{g['name']} ({g['total_bytes'] / GB:.0f} GB"
        + (f", {g['free_bytes'] / GB:.0f} GB free)" if "free_bytes" in g else ")")
        for g in gpus
    )


def _gpu_check(gpus: list[dict[str, Any]]) -> Check:
    return Check("gpu", "ok", describe_gpus(gpus) + " (this machine)")


# Rows for tables (the Operations page) -----------------------------------------------------


def process_rows(processes: list[ProcessInfo]) -> list[dict[str, Any]]:
    """One row per registered process: what it is, whether it lives, what it does."""
    return [
        {
            "kind": p.kind,
            "host": p.host,
            "pid": p.pid,
            "state": "replaced" if p.replaced else "stale" if p.stale else "live",
            "last heartbeat (s ago)": round(p.age_seconds, 1),
            "started": p.started_at,
            "doing": describe_process(p),
            "gpus": describe_gpus(p.detail.get("gpus") or []),
        }
        for p in processes
    ]


def queue_rows(queue: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    return [{"kind": kind, **states} for kind, states in sorted(queue.items())]
