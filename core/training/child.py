"""The process that runs one claimed job: `python -m core.training.child JOB_ID TOKEN`.

Started by the worker in its own process group with its output going to the job's log. It
holds the job only while the fencing token it was given is still the job's token: every
write about the job goes through its `JobLease`, and it dies with its worker
(PR_SET_PDEATHSIG plus a parent-pid watchdog), so a job never runs twice at the same time.
What the job does is its kind's handler (core.training.handlers.HANDLERS).

Exit codes: 0 done (reported through the lease), 1 failed (reported through the lease with
reason and message, the traceback in the log), 3 stopped on request (with a checkpoint at
the step reached, or before training began), 75 lease lost (another worker owns the job
now; nothing more was written). How a stop is answered: core.training.stopping.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from typing import NoReturn

from core.training.handlers import EXIT_FAILED, EXIT_LOST, EXIT_OK, EXIT_STOPPED

__all__ = ["EXIT_FAILED", "EXIT_LOST", "EXIT_OK", "EXIT_STOPPED", "main"]
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to SIGKILL us when the worker dies; also watch its pid (other systems, and
    the moment between fork and prctl)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass
    if not parent_pid:
        return
    if os.getppid() != parent_pid:
        os._exit(EXIT_LOST)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(EXIT_LOST)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def log(msg: str) -> None:
    rank = os.environ.get("RANK")  # set by torchrun for the ranks of a distributed job
    print(f"[{time.strftime('%H:%M:%S')}]{f' rank {rank}:' if rank else ''} {msg}", flush=True)


def main(argv: list[str]) -> int:
    from core.training.distributed import JOB_PID_ENV, current_rank, writes_about_job

    job_id, token = int(argv[0]), int(argv[1])
    node_rank = int(argv[3]) if len(argv) > 3 else 0  # a machine that joined a job: > 0
    rank = current_rank()
    # The worker's pid; for a rank of a distributed job, torchrun's (core.training.launch).
    parent = int(argv[2]) if len(argv) > 2 else None
    die_with_parent(os.getppid() if rank is not None else parent)
    stop = threading.Event()
    # Until the job's folder is known, a stop request ends the process at once: nothing of
    # this attempt exists yet.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(EXIT_STOPPED))
    signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_STOPPED))

    from core.config import get_settings
    from core.db import get_engine
    from core.training.handlers import HANDLERS, JobContext
    from core.training.jobs import load_job
    from core.training.queue import FailureReason, JobLease, LeaseLost
    from core.training.stopping import StopTracker, listen_for_stop

    settings = get_settings()
    engine = get_engine(settings)
    lease = JobLease(engine, job_id, token)
    if not lease.held():
        log(f"job {job_id}: token {token} no longer holds the lease; exiting")
        return EXIT_LOST
    job = load_job(engine, job_id)
    assert job is not None

    def exit_stopped() -> None:
        log("stop requested before the work began: nothing to save; exiting")
        sys.stdout.flush()
        os._exit(EXIT_STOPPED)

    # A stop request is answered at once (the worker then waits for the checkpoint instead of
    # killing the process after its short grace period); see core.training.stopping.
    # Of a distributed job's ranks only rank 0 reports (as the job process it stands for).
    reports = writes_about_job(rank, node_rank)
    tracker = StopTracker(
        job.output_dir if reports else None,
        stop,
        exit_now=exit_stopped,
        pid=int(os.environ.get(JOB_PID_ENV) or 0) if rank is not None else None,
    )
    listen_for_stop(tracker, (signal.SIGTERM, signal.SIGINT))

    def lost() -> NoReturn:
        log(
            f"job {job_id}: lease lost (token {token} superseded or expired); stopping "
            "without writing anything more"
        )
        sys.stdout.flush()
        os._exit(EXIT_LOST)

    ctx = JobContext(job, lease, engine, settings, stop, tracker, log, lost, rank, node_rank)
    log(
        f"job {job_id} ({job.kind} {job.name!r}) attempt {job.attempts}, token {token}, "
        f"pid {os.getpid()}" + (f", rank {rank.rank} of {rank.world_size}" if rank else "")
    )
    handler = HANDLERS.get(job.kind)
    try:
        if handler is None:
            raise RuntimeError(f"no handler for job kind {job.kind!r}")
        return handler(ctx)
    except LeaseLost:
        lost()
    except Exception as err:  # reported through the lease, for page and CLI
        traceback.print_exc()
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        log(f"failed: {message}")
        if not ctx.writes:
            # Often only the echo of rank 0's end (a broken collective): the job process
            # reports the failure with the log that names every rank's error.
            return EXIT_FAILED
        if not lease.fail(FailureReason.EXCEPTION, message):
            lost()
        return EXIT_FAILED


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except Exception:  # before the lease could be used (the worker reports the exit code)
        traceback.print_exc()
        code = EXIT_FAILED
    sys.stdout.flush()
    os._exit(code)
