"""How a job process stops on request without losing work, and how its worker knows.

The worker sends SIGTERM to the job's process group. The job process answers at once (from a
thread woken by the signal, even while the main thread is deep inside a tensor operation) by
writing a small report next to its checkpoints, `OUTPUT_DIR/stop.json`:

    {"pid": ..., "state": "stopping" | "saving" | "saved" | "exiting",
     "phase": "setup" | "train" | "finish", "step": N, "deadline": <unix time>, ...}

`deadline` says until when the process expects to make its next sign of progress (end of the
current step, end of the checkpoint save). It is pushed forward at every step, evaluation
batch and save while the stop is under way, by a window derived from the step and save times
measured in this very run, so a slow step on a busy CPU is waited for and a hang is not: the
worker sends SIGKILL only when the deadline has passed (or no report came within its short
grace period, or an overall cap was reached).

Before training has begun (loading the model, building the demo model, the evaluation before
training) nothing of this attempt is worth saving: the process exits at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.training.checkpoints import checkpoint_step, checkpoint_usable

STOP_FILE = "stop.json"
MIN_WINDOW_S = 60.0  # no sign of progress for this long while stopping = a hang
MAX_STOP_S = 30 * 60.0  # a stop never takes longer than this, progress or not
DEFAULT_SAVE_S = 20.0  # until a save has been measured in this run


def stop_file(output_dir: str | Path) -> Path:
    return Path(output_dir) / STOP_FILE


def read_stop_report(output_dir: str | Path | None) -> dict[str, Any] | None:
    if not output_dir:
        return None
    try:
        data = json.loads(stop_file(output_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear_stop_report(output_dir: str | Path | None) -> None:
    if output_dir:
        try:
            stop_file(output_dir).unlink()
        except OSError:
            pass


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def cancel_summary(
    *, step: int, checkpoint: str | None, report: dict[str, Any] | None, rc: int
) -> str:
    """What a cancelled job shows: "cancelled at step N, checkpoint saved", or what was lost."""
    report = report or {}
    saved_step = checkpoint_step(checkpoint) if checkpoint_usable(checkpoint) else None
    if report.get("state") == "saved" and report.get("step") is not None:
        at = int(report["step"])
        if saved_step == at:
            return f"cancelled at step {at}, checkpoint saved"
    if report.get("state") == "exiting" or report.get("phase") == "setup":
        if saved_step is not None:
            return (
                f"cancelled before training resumed; the checkpoint at step {saved_step} "
                "is kept (Retry resumes from it)"
            )
        return "cancelled before training began; nothing to save"
    how = "" if rc in (0, 3) else f" (the process was stopped with exit code {rc})"
    if saved_step is not None and saved_step >= step:
        return f"cancelled at step {saved_step}, checkpoint saved{how}"
    if saved_step is not None:
        return (
            f"cancelled at step {step}{how}; newest checkpoint at step {saved_step} "
            f"({step - saved_step} steps to redo)"
        )
    return f"cancelled at step {step}{how}; no checkpoint was saved"


class StopTracker:
    """The job process's side: what it is doing now, how long a stop may take, the report.

    `request()` is called (from the signal thread) when the worker asks the process to stop;
    the training callbacks call `set_phase`, `step_done`, `save_started`, `save_done` and
    `progress`.
    """

    def __init__(
        self,
        output_dir: str | Path | None,
        stop: threading.Event,
        *,
        exit_now: Callable[[], None] | None = None,
        min_window_s: float = MIN_WINDOW_S,
        default_save_s: float = DEFAULT_SAVE_S,
        pid: int | None = None,
    ) -> None:
        self.path = stop_file(output_dir) if output_dir else None
        # The process the worker supervises: this one, or the job process a rank stands for.
        self.pid = pid or os.getpid()
        self.stop = stop
        self.exit_now = exit_now
        self.min_window_s = min_window_s
        self.default_save_s = default_save_s
        self.phase = "setup"
        self.step = 0
        self.step_seconds: list[float] = []
        self.save_seconds: float | None = None
        self._save_began: float | None = None
        self._step_began: float | None = None
        self._last_report = 0.0
        self._lock = threading.RLock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            clear_stop_report(self.path.parent)

    # The window ------------------------------------------------------------------------------
    def window(self) -> float:
        """Seconds to wait for the next sign of progress: three times the slowest recent
        step (or twice what the step under way took so far, before any step was measured)
        plus twice the save time, never less than `min_window_s`."""
        step = max(self.step_seconds[-20:], default=0.0)
        if self._step_began is not None:
            step = max(step, (time.monotonic() - self._step_began) * 2 / 3)
        save = self.save_seconds if self.save_seconds is not None else self.default_save_s
        return max(self.min_window_s, 3 * step + 2 * save)

    def report(self, state: str, **extra: Any) -> None:
        if self.path is None:
            return
        now = time.time()
        data = {
            "pid": self.pid,
            "state": state,
            "phase": self.phase,
            "step": self.step,
            "at": now,
            "deadline": now + self.window(),
            "window_s": round(self.window(), 1),
            "step_seconds": round(max(self.step_seconds[-20:], default=0.0), 3),
            **extra,
        }
        try:
            _write_atomic(self.path, data)
        except OSError:
            pass
        self._last_report = time.monotonic()

    # Events ----------------------------------------------------------------------------------
    def request(self) -> None:
        with self._lock:
            first = not self.stop.is_set()
            self.stop.set()
            if self.phase == "setup":
                self.report("exiting")
                if self.exit_now is not None:
                    self.exit_now()
                return
            if first:
                self.report("stopping")

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            if self.stop.is_set():
                if phase == "setup" and self.exit_now is not None:
                    self.report("exiting")
                    self.exit_now()
                self.report("stopping")

    def step_started(self) -> None:
        self._step_began = time.monotonic()

    def step_done(self, step: int) -> None:
        with self._lock:
            self.step = step
            if self._step_began is not None:
                self.step_seconds.append(time.monotonic() - self._step_began)
                del self.step_seconds[:-50]
                self._step_began = None
            if self.stop.is_set():
                self.report("saving")

    def save_started(self) -> None:
        self._save_began = time.monotonic()

    def save_done(self, step: int) -> None:
        with self._lock:
            if self._save_began is not None:
                self.save_seconds = time.monotonic() - self._save_began
                self._save_began = None
            self.step = step
            if self.stop.is_set():
                self.report("saved-checkpoint")

    def progress(self) -> None:
        """Any sign of life while stopping (an evaluation batch): at most once a second."""
        if self.stop.is_set() and time.monotonic() - self._last_report >= 1.0:
            with self._lock:
                self.report("stopping")

    def finished(self, step: int, checkpoint: str | None) -> None:
        """The stop is complete: a checkpoint at `step` is on disk."""
        with self._lock:
            self.step = step
            self.report("saved", checkpoint=checkpoint)


def listen_for_stop(tracker: StopTracker, signals: tuple[int, ...]) -> None:
    """Route `signals` to `tracker.request()` through a thread woken by the signal itself
    (signal.set_wakeup_fd), so the answer does not wait for the main thread to get back to
    Python bytecode. Call from the main thread."""
    import signal

    r, w = os.pipe()
    os.set_blocking(w, False)
    for sig in signals:
        signal.signal(sig, lambda *_: None)  # the C-level handler writes to the wakeup fd
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    wanted = {int(s) for s in signals}

    def run() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except InterruptedError:
                continue
            if not data:
                return
            if any(b in wanted for b in data):
                tracker.request()

    threading.Thread(target=run, name="stop-listener", daemon=True).start()
