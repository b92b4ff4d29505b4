"""The process that runs one claimed job: `python -m core.training.child JOB_ID TOKEN`.

Started by the worker in its own process group with its output going to the job's log. It
holds the job only while the fencing token it was given is still the job's token: every
durable write (metrics, checkpoint, adapter) is fenced, and it dies with its worker
(PR_SET_PDEATHSIG plus a parent-pid watchdog), so a job never runs twice at the same time.

Exit codes: 0 done, 1 failed (exception; message in the log), 3 stopped on request (with a
checkpoint at the step reached, or before training began), 75 lease lost (another worker owns
the job now; nothing more was written). How a stop is answered: core.training.stopping.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from sqlalchemy import insert, update

EXIT_OK, EXIT_FAILED, EXIT_STOPPED, EXIT_LOST = 0, 1, 3, 75
ERROR_MARK = "CLARA-ERROR: "
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
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str]) -> int:
    job_id, token = int(argv[0]), int(argv[1])
    die_with_parent(int(os.environ.get("CLARA_WORKER_PID") or 0) or None)
    stop = threading.Event()
    # Until the job's folder is known, a stop request ends the process at once: nothing of
    # this attempt exists yet.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(EXIT_STOPPED))
    signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_STOPPED))

    from core.config import get_settings
    from core.db import get_engine, session_scope
    from core.training.models import TrainingJob, TrainingMetric
    from core.training.queue import JOBS, _fenced, lease_held, update_running
    from core.training.stopping import StopTracker, listen_for_stop

    settings = get_settings()
    engine = get_engine(settings)
    if not lease_held(engine, job_id, token):
        log(f"job {job_id}: token {token} no longer holds the lease; exiting")
        return EXIT_LOST
    with session_scope(engine) as s:
        job = s.get(TrainingJob, job_id)
        kind, spec_data, attempt = job.kind, dict(job.spec), job.attempts
        base_ref, version_id, output_dir = job.base_model, job.dataset_version_id, job.output_dir
        owner, name = job.owner, job.name

    def exit_stopped() -> None:
        log("stop requested before training began: nothing to save; exiting")
        sys.stdout.flush()
        os._exit(EXIT_STOPPED)

    # A stop request is answered at once (the worker then waits for the checkpoint instead of
    # killing the process after its short grace period); see core.training.stopping.
    tracker = StopTracker(output_dir, stop, exit_now=exit_stopped)
    listen_for_stop(tracker, (signal.SIGTERM, signal.SIGINT))

    def lost() -> None:
        log(
            f"job {job_id}: lease lost (token {token} superseded or expired); stopping "
            "without writing anything more"
        )
        os._exit(EXIT_LOST)

    def sink(row: dict[str, Any]) -> None:
        values = {
            k: row.get(k)
            for k in (
                "phase",
                "step",
                "epoch",
                "loss",
                "learning_rate",
                "grad_norm",
                "tokens_per_second",
                "eval_loss",
                "eval_perplexity",
            )
        }
        values["phase"] = values["phase"] or "train"
        with engine.begin() as conn:
            job_values: dict[str, Any] = {}
            if values["phase"] == "train":
                job_values["step"] = int(values["step"] or 0)
            res = conn.execute(
                update(JOBS)
                .where(_fenced(job_id, token))
                .values(**job_values, heartbeat_at=JOBS.c.heartbeat_at)
            )
            if not res.rowcount:
                lost()
            conn.execute(
                insert(TrainingMetric.__table__).values(
                    job_id=job_id,
                    attempt=attempt,
                    extra=row.get("extra") or {},
                    at=_now(),
                    **{k: v for k, v in values.items() if v is not None},
                )
            )

    log(f"job {job_id} ({kind} {name!r}) attempt {attempt}, token {token}, pid {os.getpid()}")
    if kind == "sleep":
        sink({"phase": "run", "step": 0, "extra": {"pid": os.getpid(), "token": token}})
        tracker.set_phase("train")  # stops through the event, as training does
        deadline = time.monotonic() + float(spec_data.get("seconds", 0))
        while time.monotonic() < deadline:
            if stop.is_set():
                return EXIT_STOPPED
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if float(spec_data.get("fail", 0)):
            raise RuntimeError("sleep job asked to fail")
        return EXIT_OK

    from core.auth import SYSTEM, principal_for
    from core.datasets.versions import get_version, read_version
    from core.training.adapters import get_adapter, register_adapter
    from core.training.base_model import base_model_fingerprint, model_revision
    from core.training.jobs import DEMO
    from core.training.runner import run_sft
    from core.training.spec import spec_from_dict

    spec = spec_from_dict(spec_data)
    base = base_ref
    if base == DEMO:
        from core.training.demo_model import ensure_demo_model

        log("using the demo base model (building it first if needed)")
        base = str(ensure_demo_model(settings, progress=lambda m, _f: log(m)))
    version = get_version(engine, SYSTEM, version_id)
    train_rows = read_version(version, "train").to_pylist()
    eval_rows = read_version(version, "eval").to_pylist()
    log(
        f"dataset {version.dataset_name}@v{version.number}: {len(train_rows)} train, "
        f"{len(eval_rows)} eval samples"
    )
    parent = get_adapter(engine, SYSTEM, spec.adapter) if spec.method == "continue" else None
    fingerprint = base_model_fingerprint(base)
    if parent is not None and parent.base_model_fingerprint != fingerprint:
        raise RuntimeError(
            f"adapter {parent.name!r} was trained on another base model than "
            f"{base} (fingerprint differs)"
        )
    with session_scope(engine) as s:
        before_done = s.query(TrainingMetric).filter_by(job_id=job_id, phase="eval_before").count()

    def on_checkpoint(path: str, step: int) -> None:
        if not update_running(engine, job_id, token, checkpoint=path, step=step):
            lost()
        if stop.is_set():
            log(f"stop requested: checkpoint saved at step {step}")

    result = run_sft(
        spec,
        train_rows,
        eval_rows,
        output_dir,
        base_model=base,
        parent_adapter_path=parent.path if parent else None,
        sink=sink,
        stop=stop,
        guard=lambda: lease_held(engine, job_id, token),
        on_lost=lost,
        on_checkpoint=on_checkpoint,
        tracker=tracker,
        eval_before=not before_done,
        log=log,
    )
    if result.stopped_early:
        saved = result.metrics.get("checkpoint")
        if saved:
            tracker.finished(int(result.metrics.get("steps") or 0), saved)
        return EXIT_STOPPED
    metrics = dict(result.metrics)
    if before_done and "eval_loss_before" not in metrics:
        metrics.update(_recorded_before(engine, job_id))
    if not lease_held(engine, job_id, token):
        lost()
    actor = principal_for(engine, owner) or SYSTEM
    info = register_adapter(
        engine,
        actor,
        name=name,
        files_dir=result.adapter_dir,
        base_model=base,
        base_model_fingerprint=fingerprint,
        method=spec.method,
        dataset_version_id=version.id,
        dataset_manifest_sha256=version.manifest_sha256,
        job_id=job_id,
        job_token=token,
        parent_adapter_id=parent.id if parent else None,
        metrics=metrics,
        spec=spec.model_dump(mode="json"),
        extra_manifest={
            "base_model_ref": base_ref,
            "base_model_revision": model_revision(base),
            "dataset_ref": f"{version.dataset_name}@v{version.number}",
        },
        settings=settings,
    )
    log(f"registered adapter {info.name!r} (id {info.id}) at {info.path}")
    return EXIT_OK


def _recorded_before(engine, job_id: int) -> dict[str, float]:  # noqa: ANN001
    from core.db import session_scope
    from core.training.models import TrainingMetric

    with session_scope(engine) as s:
        row = (
            s.query(TrainingMetric)
            .filter_by(job_id=job_id, phase="eval_before")
            .order_by(TrainingMetric.id)
            .first()
        )
        if row is None:
            return {}
        return {"eval_loss_before": row.eval_loss, "eval_perplexity_before": row.eval_perplexity}


def _now():  # noqa: ANN202
    from core.db.base import utcnow

    return utcnow()


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except Exception as err:  # the job's log must end with the reason, for page and CLI
        traceback.print_exc()
        print(f"{ERROR_MARK}{type(err).__name__}: {err}".splitlines()[0], flush=True)
        code = EXIT_FAILED
    sys.stdout.flush()
    os._exit(code)
