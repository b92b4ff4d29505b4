"""Heartbeats of workers and servers: which processes run where, since when, doing what.

A process registers one row of `service_heartbeats` when it starts, renews it every
`CLARA_HEARTBEAT_SECONDS` and deletes it on a clean exit, so a row whose heartbeat is older
than `CLARA_HEALTH_STALE_SECONDS` is a process that died (or hangs). The worker renews from
its own loop, so a worker whose loop hangs goes stale too; the servers renew from a daemon
thread, since their requests are handled by the HTTP server, not by a loop of ours.

Registering also clears what certainly belongs to the past: rows of the same kind on this
host (and pid namespace) whose process is gone (its pid runs nothing, or a later process),
and rows silent for longer than FORGET_AFTER. A process that died on another host (a
container that came back under a new name) stays stale until a newer process of its kind
replaces it (`replaced`), an admin forgets it, or FORGET_AFTER passes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psutil
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from core.audit import audited
from core.db import reading, writing
from core.ops.models import ServiceHeartbeat
from core.permissions import Principal, require
from core.training.queue import db_now

log = logging.getLogger("clara.heartbeats")

FORGET_AFTER = timedelta(days=1)
HOST = socket.gethostname()


def _pid_namespace() -> int | None:
    """Containers sharing a host name (host networking) number their processes each in
    their own namespace: a pid means something only within the namespace it came from."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


PID_NAMESPACE = _pid_namespace()


def process_started(pid: int) -> float | None:
    """The process's start time (psutil): with the pid it names one process for good."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class ProcessHeartbeat:
    """This process's row: `start()`, then `beat()` (or `beat_if_due()` from a loop, or
    `run_in_background()`), `stop()` on a clean exit. `describe()` returns what the row's
    detail says besides the process start time (kinds, current jobs, address)."""

    def __init__(
        self,
        engine: Engine,
        kind: str,
        describe: Callable[[], dict[str, Any]] = dict,
        every: float = 10.0,
    ) -> None:
        self.engine, self.kind, self.describe, self.every = engine, kind, describe, every
        self.row_id: int | None = None
        self._last = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _detail(self) -> dict[str, Any]:
        return {
            **self.describe(),
            "process_started": process_started(os.getpid()),
            "pid_namespace": PID_NAMESPACE,
        }

    def start(self) -> None:
        with writing(self.engine) as s:
            now = db_now(s.connection())
            _forget_gone(s, self.kind, now)
            self.row_id = _insert(s, self.kind, now, self._detail())
        self._last = time.monotonic()

    def beat(self) -> None:
        """Renew the row (made again if an admin forgot it while this process lives). A
        failed write is logged, not raised: the next beat tries again, and a process must
        not stop serving because the database was busy once."""
        self._last = time.monotonic()
        try:
            with writing(self.engine) as s:
                now = db_now(s.connection())
                detail = self._detail()
                renewed = s.execute(
                    update(ServiceHeartbeat)
                    .where(ServiceHeartbeat.id == self.row_id)
                    .values(heartbeat_at=now, detail=detail)
                ).rowcount
                if not renewed:
                    self.row_id = _insert(s, self.kind, now, detail)
        except Exception as err:  # see the docstring
            log.warning("%s heartbeat not written: %s", self.kind, err)

    def beat_if_due(self) -> None:
        if self.row_id is not None and time.monotonic() - self._last >= self.every:
            self.beat()

    def run_in_background(self) -> None:
        def loop() -> None:
            while not self._stopping.wait(self.every):
                self.beat()

        self._thread = threading.Thread(target=loop, name=f"{self.kind}-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every + 5)
        if self.row_id is None:
            return
        try:
            with writing(self.engine) as s:
                s.execute(delete(ServiceHeartbeat).where(ServiceHeartbeat.id == self.row_id))
        except Exception as err:  # exiting anyway; the row goes stale and says so
            log.warning("%s heartbeat not removed: %s", self.kind, err)
        self.row_id = None

    @contextmanager
    def running(self) -> Iterator[ProcessHeartbeat]:
        """Registered, renewed by a daemon thread, removed at the end of the block."""
        self.start()
        self.run_in_background()
        try:
            yield self
        finally:
            self.stop()


def _insert(s: Session, kind: str, now: datetime, detail: dict[str, Any]) -> int:
    row = ServiceHeartbeat(
        kind=kind, host=HOST, pid=os.getpid(), started_at=now, heartbeat_at=now, detail=detail
    )
    s.add(row)
    s.flush()
    return row.id


def _forget_gone(s: Session, kind: str, now: datetime) -> None:
    s.execute(delete(ServiceHeartbeat).where(ServiceHeartbeat.heartbeat_at < now - FORGET_AFTER))
    mine = s.scalars(
        select(ServiceHeartbeat).where(ServiceHeartbeat.kind == kind, ServiceHeartbeat.host == HOST)
    )
    for row in mine:
        if (row.detail or {}).get("pid_namespace") != PID_NAMESPACE:
            continue
        started = (row.detail or {}).get("process_started")
        current = process_started(row.pid)
        if current is None or started is None or abs(current - float(started)) > 0.01:
            s.delete(row)


# Reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    """A registered process as health sees it. `stale`: silent longer than the threshold;
    `replaced`: stale, but a newer process of its kind (for workers: taking at least its job
    kinds) started after its last heartbeat."""

    id: int
    kind: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    age_seconds: float
    stale: bool
    replaced: bool
    detail: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.kind} {self.host}:{self.pid}"


def list_processes(engine: Engine, stale_after: float) -> list[ProcessInfo]:
    """Every registered process, oldest first, judged against `stale_after` seconds."""
    with reading(engine) as s:
        now = db_now(s.connection())
        rows = list(s.scalars(select(ServiceHeartbeat).order_by(ServiceHeartbeat.id)))
        ages = {r.id: max(0.0, (now - r.heartbeat_at).total_seconds()) for r in rows}
        live = [r for r in rows if ages[r.id] <= stale_after]
        return [
            ProcessInfo(
                id=r.id,
                kind=r.kind,
                host=r.host,
                pid=r.pid,
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
                age_seconds=ages[r.id],
                stale=ages[r.id] > stale_after,
                replaced=ages[r.id] > stale_after and any(_replaces(n, r) for n in live),
                detail=r.detail or {},
            )
            for r in rows
        ]


def _replaces(newer: ServiceHeartbeat, old: ServiceHeartbeat) -> bool:
    if newer.kind != old.kind or newer.started_at <= old.heartbeat_at:
        return False
    kinds = set((old.detail or {}).get("kinds") or [])
    return kinds <= set((newer.detail or {}).get("kinds") or [])


def forget_stale_processes(engine: Engine, actor: Principal, stale_after: float) -> list[str]:
    """Delete the rows of processes silent longer than `stale_after` (an admin saw they are
    gone for good); returns their names. Audited."""
    with audited(engine, actor, "system.forget_processes") as ctx:
        require(actor, "system:maintain")
        stale = [p for p in list_processes(engine, stale_after) if p.stale]
        ctx.detail["processes"] = [p.name for p in stale]
        with writing(engine) as s:
            s.execute(
                delete(ServiceHeartbeat).where(ServiceHeartbeat.id.in_([p.id for p in stale]))
            )
    return [p.name for p in stale]


def why_unclaimed(kind: str, gpus: int, processes: list[ProcessInfo]) -> str | None:
    """Why no live worker would claim a queued job of `kind` needing `gpus` GPUs per machine
    (None: one would)."""
    workers = [p for p in processes if p.kind == "worker" and not p.stale]
    if not workers:
        return "waits for a worker: none is running (start `clara worker`)"
    takers = [p for p in workers if kind in (p.detail.get("kinds") or [])]
    if not takers:
        return f"waits for a worker that takes {kind} jobs: the live workers do not"
    most = max(int(p.detail.get("gpu_slots") or 0) for p in takers)
    if gpus > most:
        return (
            f"waits for a worker with {gpus} GPU(s): the live workers have at most {most} "
            f"(start `clara worker --gpus {gpus}` on a machine with them)"
        )
    return None
