"""`clara worker`: claims jobs (training, scoring, embedding; `kinds` limits which) and runs
each in a child process, heartbeating.

One loop, no threads: each `tick()` reaps finished children, renews leases (and stops
cancelled or lost jobs) and claims while a slot is free; `run()` ticks and sleeps briefly.
The child reports its job's success or failure through its lease; the worker records only
what the child could not: a stop it asked for, a process killed by a signal, an exit code.
Children are started with an argument list in their own process group with output to the
job's log; stop = SIGTERM to the group (the trainer finishes its step, checkpoints at it and
exits). SIGKILL follows only when the process does not answer within a short grace period,
or when it answered but then stops making progress (its stop report's deadline passes; see
core.training.stopping). The pid is recorded together with the process start time, and a
signal is only sent after checking that the pid still belongs to that very process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from sqlalchemy import Engine, select

from core.config import Settings, get_settings
from core.db import get_engine, reading
from core.learning.cycles import scheduler_tick
from core.ops.health import gpu_devices
from core.ops.heartbeats import ProcessHeartbeat
from core.ops.measures import observe_worker_job, observe_worker_running
from core.training.child import EXIT_LOST, EXIT_OK, EXIT_STOPPED
from core.training.distributed import claim_node
from core.training.jobs import load_job
from core.training.models import JOB_KINDS, TrainingJob
from core.training.queue import ClaimedJob, FailureReason, JobLease, claim_next_job
from core.training.stopping import (
    MAX_STOP_S,
    cancel_summary,
    clear_stop_report,
    read_stop_report,
)

DEFAULT_LEASE_S = 30.0
# SIGTERM → SIGKILL when the process does not even answer (a cancel then ends within 10 s).
# A process that answers is given the time its step and checkpoint take, as it reports.
STOP_GRACE_S = 8.0
LEARNING_EVERY_S = 5.0  # how often the learning scheduler follows open cycles
DUE_EVERY_S = 30.0  # and looks for due ones (counting new samples reads every source)


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def signal_process_group(pid: int, started_at: float | None, sig: int) -> bool:
    """Signal the group of `pid` only if `pid` is still the process started at `started_at`."""
    if started_at is None:
        return False
    current = process_start_time(pid)
    if current is None or abs(current - started_at) > 0.01:
        return False  # exited, or the pid was reused by an unrelated process
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass
class Slot:
    job: ClaimedJob
    proc: subprocess.Popen
    started_at: float | None
    log_path: Path
    output_dir: Path | None = None
    stop_sent_at: float | None = None
    # cancel | shutdown | lost | left (a joined job ended) | finished (no signal sent)
    stop_reason: str | None = None
    killed: bool = False
    last_beat: float = field(default_factory=time.monotonic)
    lease: JobLease | None = None  # made from `job` when not given
    # > 0: this worker joined another worker's distributed job as that machine (node) rank;
    # it holds no lease then and records nothing about the job.
    node_rank: int = 0


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """`--kinds train,score`: "train" is the "sft" kind; empty means every kind."""
    if not text:
        return JOB_KINDS
    kinds = []
    for part in text.split(","):
        kind = {"train": "sft", "training": "sft"}.get(part.strip(), part.strip())
        if kind not in JOB_KINDS:
            raise ValueError(
                f"--kinds: {part.strip()!r} is not a job kind (train, score, embed, embed-tune, "
                "gate, sleep)"
            )
        if kind == "sft":  # the queue exercise and learning gates run wherever training does
            kinds.extend(k for k in ("sleep", "gate") if k not in kinds)
        kinds.append(kind)
    return tuple(dict.fromkeys(kinds))


class Worker:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        concurrency: int = 1,
        lease_seconds: float = DEFAULT_LEASE_S,
        poll_interval: float = 0.25,
        once: bool = False,
        grace_seconds: float = STOP_GRACE_S,
        engine: Engine | None = None,
        kinds: tuple[str, ...] = JOB_KINDS,
        gpus: int | None = None,
        log=print,
    ) -> None:
        self.settings = settings or get_settings()
        self.engine = engine or get_engine(self.settings)
        self.concurrency = max(1, concurrency)
        self.lease_seconds = lease_seconds
        self.heartbeat_every = max(0.5, lease_seconds / 4)
        self.poll_interval = poll_interval
        self.once = once
        self.grace = grace_seconds
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.kinds = tuple(kinds)
        self.gpus = gpus  # GPUs jobs may use here; None: those found at start
        self.slots: list[Slot] = []
        self._stopping = False
        self._last_cancel_check = 0.0
        self._last_learning = self._last_due = -DUE_EVERY_S  # both at the first tick
        self.log = log
        # Where this worker serves /metrics (set by `clara worker --metrics-port`), and its
        # GPUs (read once at start): both go into its heartbeat for health to show.
        self.metrics_url: str | None = None
        self._gpus: list[dict] = []
        self.presence = ProcessHeartbeat(
            self.engine, "worker", self._describe, every=self.settings.heartbeat_seconds
        )

    # Lifecycle -------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self._stopping = True

    def _describe(self) -> dict:
        return {
            "worker_id": self.worker_id,
            "kinds": list(self.kinds),
            "concurrency": self.concurrency,
            "jobs": [{"id": s.job.id, "kind": s.job.kind, "name": s.job.name} for s in self.slots],
            "metrics": self.metrics_url,
            "gpus": self._gpus,
            "gpu_slots": self.gpus or 0,
        }

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.log(
            f"worker {self.worker_id}: concurrency {self.concurrency}, "
            f"lease {self.lease_seconds:.0f}s, kinds {','.join(self.kinds)}"
        )
        self._gpus = gpu_devices()
        if self.gpus is None:
            self.gpus = len(self._gpus)
        self.presence.start()
        try:
            idle = False
            while not self._stopping:
                claimed_any = self.tick()
                if self.once and not self.slots and not claimed_any:
                    idle = True
                    break
                time.sleep(self.poll_interval)
            if not idle:
                self._shutdown()
        finally:
            self.presence.stop()
            for s, h in old.items():
                signal.signal(s, h)
        self.log(f"worker {self.worker_id}: stopped")
        return 0

    def tick(self, *, claim: bool = True) -> bool:
        """One round of supervision: reap finished children, stop cancelled ones, heartbeat,
        then (with `claim`) start jobs while a slot is free. Returns whether it claimed."""
        self._reap()
        self._check_cancels()
        self._heartbeat()
        if claim:
            self._learning()
        claimed = self._fill_slots() if claim else False
        self.presence.beat_if_due()
        return claimed

    def _learning(self) -> None:
        """The learning scheduler (core.learning.cycles): follow open cycles, start due ones.
        Every training worker runs it; the database lets only one start a given cycle."""
        now = time.monotonic()
        if "sft" not in self.kinds or now - self._last_learning < LEARNING_EVERY_S:
            return
        self._last_learning = now
        due = now - self._last_due >= DUE_EVERY_S
        if due:
            self._last_due = now
        try:
            scheduler_tick(self.engine, self.log, start_due=due)
        except Exception as err:  # never let the scheduler stop the worker's own jobs
            self.log(f"learning scheduler: {type(err).__name__}: {err}")

    def _fill_slots(self) -> bool:
        claimed_any = False
        # A distributed job waiting for machines holds others' GPUs: joining it comes first.
        while "sft" in self.kinds and len(self.slots) < self.concurrency and not self._stopping:
            seat = claim_node(self.engine, self.worker_id, self.host, self.gpus or 0)
            if seat is None:
                break
            claimed_any = True
            self._start(
                ClaimedJob(seat.job_id, seat.token, seat.attempt, seat.kind, seat.name),
                node_rank=seat.node_rank,
            )
        while len(self.slots) < self.concurrency and not self._stopping:
            job = claim_next_job(
                self.engine,
                self.worker_id,
                self.lease_seconds,
                kinds=self.kinds,
                host=self.host,
                gpus=self.gpus or 0,
            )
            if job is None:
                break
            claimed_any = True
            self._start(job)
        return claimed_any

    def _start(self, job: ClaimedJob, node_rank: int = 0) -> None:
        row = load_job(self.engine, job.id)
        log_path = Path(
            row.log_path or self.settings.data_path / "logs" / "training" / f"job-{job.id}.log"
        )
        output_dir = Path(
            row.output_dir or self.settings.data_path / "training" / "jobs" / str(job.id)
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        if not node_rank:
            clear_stop_report(output_dir)  # a report of an earlier attempt is not this one's
        with log_path.open("ab") as fh:
            node = f", node {node_rank}" if node_rank else ""
            fh.write(
                f"\n===== attempt {job.attempt}{node} on {self.worker_id} at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode()
            )
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # Jobs running side by side share the cores instead of each taking all of them.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            env.setdefault("CLARA_TRAIN_THREADS", str(max(1, cores // self.concurrency)))
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "core.training.child",
                    str(job.id),
                    str(job.token),
                    str(os.getpid()),
                    *([str(node_rank)] if node_rank else []),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        started = process_start_time(proc.pid)
        lease = JobLease(self.engine, job.id, job.token)
        if not node_rank:
            lease.update(pid=proc.pid, pid_started_at=started)
        self.slots.append(
            Slot(job, proc, started, log_path, output_dir, lease=lease, node_rank=node_rank)
        )
        observe_worker_running(len(self.slots))
        self.log(f"job {job.id}: started attempt {job.attempt}{node} (pid {proc.pid})")

    # Supervision -----------------------------------------------------------------------
    def _kill_at(self, slot: Slot) -> float:
        """When (monotonic) a stopping process is killed: after the grace period if it never
        answered; else when the deadline of its newest stop report has passed (it stopped
        making progress); never later than MAX_STOP_S after the stop was sent."""
        assert slot.stop_sent_at is not None
        at = slot.stop_sent_at + self.grace
        report = read_stop_report(slot.output_dir)
        if report and report.get("pid") == slot.proc.pid and report.get("deadline"):
            remaining = float(report["deadline"]) - time.time()
            at = max(at, time.monotonic() + remaining)
        return min(at, slot.stop_sent_at + MAX_STOP_S)

    def _kill_if_overdue(self, slot: Slot, now: float) -> None:
        if slot.stop_sent_at is None or slot.proc.poll() is not None:
            return
        if now >= self._kill_at(slot):
            if not slot.killed:
                why = (
                    "its outcome is recorded but its process has not exited"
                    if slot.stop_reason == "finished"
                    else "no progress since the stop request"
                )
                self.log(f"job {slot.job.id}: {why}; killing its process")
            slot.killed = True
            signal_process_group(slot.proc.pid, slot.started_at, signal.SIGKILL)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            self._kill_if_overdue(slot, now)
            if now - slot.last_beat < self.heartbeat_every and slot.stop_sent_at is None:
                continue
            slot.last_beat = now
            if slot.node_rank:
                # Node 0's worker holds the lease; this machine only follows the attempt.
                if slot.stop_reason is None and not self._lease(slot).held():
                    self.log(f"job {slot.job.id}: the attempt it joined ended; stopping")
                    self._stop(slot, "left")
                continue
            state = self._lease(slot).heartbeat(self.lease_seconds)
            if state.finished and slot.stop_reason is None:
                # The job recorded its outcome and is on its way out (a distributed job's
                # ranks take a moment to end): killed only if it has not gone by the grace.
                slot.stop_reason, slot.stop_sent_at = "finished", time.monotonic()
            elif not state.held and slot.stop_reason is None and slot.proc.poll() is None:
                self.log(f"job {slot.job.id}: lease lost; stopping its process")
                self._stop(slot, "lost", signal.SIGKILL)
            elif state.cancel_requested and slot.stop_reason is None:
                self.log(f"job {slot.job.id}: cancel requested; stopping (checkpoint first)")
                self._stop(slot, "cancel")

    def _check_cancels(self) -> None:
        """Cheap and frequent (every second), so a cancel stops the job within 10 s even when
        the lease, and with it the heartbeat interval, is long."""
        now = time.monotonic()
        if not self.slots or now - self._last_cancel_check < 1.0:
            return
        self._last_cancel_check = now
        ids = [s.job.id for s in self.slots if s.stop_reason is None]
        if not ids:
            return
        with reading(self.engine) as s:
            wanted = set(
                s.scalars(
                    select(TrainingJob.id).where(
                        TrainingJob.id.in_(ids), TrainingJob.cancel_requested.is_(True)
                    )
                )
            )
        for slot in self.slots:
            if slot.job.id in wanted and slot.stop_reason is None:
                self.log(f"job {slot.job.id}: cancel requested; stopping (checkpoint first)")
                self._stop(slot, "cancel")

    def _stop(self, slot: Slot, reason: str, sig: int = signal.SIGTERM) -> None:
        slot.stop_reason = reason
        slot.stop_sent_at = time.monotonic()
        signal_process_group(slot.proc.pid, slot.started_at, sig)

    def _reap(self) -> None:
        for slot in list(self.slots):
            rc = slot.proc.poll()
            if rc is None:
                continue
            self.slots.remove(slot)
            # The group may hold grandchildren (dataloader workers): end them with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(slot.proc.pid, signal.SIGKILL)
            observe_worker_job(slot.job.kind, self._finish(slot, rc), len(self.slots))

    def _lease(self, slot: Slot) -> JobLease:
        if slot.lease is None:
            slot.lease = JobLease(self.engine, slot.job.id, slot.job.token)
        return slot.lease

    def _finish(self, slot: Slot, rc: int) -> str:
        """Record what the child could not; returns how the attempt ended (succeeded, failed,
        cancelled, requeued, lost)."""
        job = slot.job
        if slot.node_rank:
            self.log(f"job {job.id}: node {slot.node_rank} ended (exit code {rc})")
            return "left"
        lease = self._lease(slot)
        row = load_job(self.engine, job.id)
        reported = row is None or row.fencing_token != job.token or row.state != "running"
        if rc == EXIT_LOST or slot.stop_reason == "lost":
            self.log(f"job {job.id}: given up (lease lost)")
            return "lost"
        if reported and (rc in (EXIT_OK, 1) or slot.stop_reason == "finished"):
            # The child recorded the outcome itself, through its lease.
            what = "gone" if row is None else row.state
            why = f": {row.error}" if row is not None and row.error else ""
            self.log(f"job {job.id}: {what}{why}")
            if row is None:
                return "lost"
            return {"queued": "requeued", "running": "lost"}.get(row.state, row.state)
        if rc == EXIT_OK:
            ok = lease.succeed()
            self.log(f"job {job.id}: succeeded" + ("" if ok else " (but the lease was lost)"))
            return "succeeded" if ok else "lost"
        if slot.stop_reason == "cancel":
            if job.kind in ("score", "embed"):
                total = f" of {row.max_steps}" if row and row.max_steps else ""
                summary = (
                    f"cancelled after {row.step if row else 0}{total} done; the finished "
                    "batches are kept"
                )
            else:
                summary = cancel_summary(
                    step=row.step if row else 0,
                    checkpoint=row.checkpoint if row else None,
                    report=read_stop_report(slot.output_dir),
                    rc=rc,
                )
            lease.cancelled(summary)
            self.log(f"job {job.id}: {summary}")
            return "cancelled"
        if slot.stop_reason == "shutdown" or rc == EXIT_STOPPED:
            # A later worker resumes it from the checkpoint (or batch) just written.
            lease.requeue()
            self.log(f"job {job.id}: stopped for worker shutdown; back in the queue")
            return "requeued"
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else rc
            hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
            reason = FailureReason.KILLED
            error = f"the job's process was killed by {name}{hint}; see the job log"
        else:
            reason = FailureReason.EXIT
            error = f"the job's process exited with code {rc}; see the job log"
        if rc < 0 and row is not None and row.attempts < row.max_attempts:
            # Killed by a signal (out of memory, operator): a new attempt resumes from the
            # last checkpoint. An exception would only repeat itself, so that one fails.
            lease.requeue(error=error, reason=reason)
            self.log(f"job {job.id}: {error}; queued again")
            return "requeued"
        lease.fail(reason, error)
        self.log(f"job {job.id}: failed: {error}")
        return "failed"

    def _shutdown(self) -> None:
        if not self.slots:
            return
        self.log(f"stopping {len(self.slots)} running job(s); they will resume elsewhere")
        for slot in self.slots:
            if slot.stop_reason is None:
                self._stop(slot, "shutdown")
        # Each process gets the time its checkpoint takes (as it reports), killed only when
        # it stops making progress.
        while self.slots:
            self._reap()
            self.presence.beat_if_due()  # checkpoints can take longer than the stale limit
            now = time.monotonic()
            for slot in self.slots:
                self._kill_if_overdue(slot, now)
            if all(s.killed for s in self.slots):
                for slot in self.slots:
                    slot.proc.wait()
                self._reap()
                break
            time.sleep(0.1)


def run_worker(settings: Settings | None = None, **kwargs) -> int:
    return Worker(settings, **kwargs).run()
