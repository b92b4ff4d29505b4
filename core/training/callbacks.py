"""transformers TrainerCallbacks: metrics to a sink (the database), stop on request, fencing."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from core.training.distributed import any_rank, sum_over_ranks

MetricSink = Callable[[dict[str, Any]], None]


class TokenCounter:
    """Real (non-padding) and total tokens of the training batches seen so far."""

    def __init__(self) -> None:
        self.real = 0
        self.total = 0

    @property
    def padding_share(self) -> float:
        return 0.0 if not self.total else 1.0 - self.real / self.total


class MetricsCallback(TrainerCallback):
    """Streams step, epoch, loss, learning rate, grad norm, tokens/s, eval loss/perplexity."""

    def __init__(self, sink: MetricSink, counter: TokenCounter, perplexity: bool = True) -> None:
        self.sink = sink
        self.counter = counter
        self.perplexity = perplexity  # no perplexity from a preference (DPO) loss
        self._last_t = time.monotonic()
        self._last_tokens = 0

    _training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_t, self._last_tokens = time.monotonic(), self.counter.real
        self._training = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch}
        if "eval_loss" in logs:
            if not self._training:
                return  # before/after evaluations are recorded by the runner itself
            row.update(
                phase="eval",
                eval_loss=logs["eval_loss"],
                eval_perplexity=_ppl(logs["eval_loss"]) if self.perplexity else None,
            )
        elif "loss" in logs:
            # Every rank logs the training loss at the same step: the tokens of all of them.
            real, total = sum_over_ranks([self.counter.real, self.counter.total], args.device)
            now = time.monotonic()
            dt = now - self._last_t
            tps = (real - self._last_tokens) / dt if dt > 0 else None
            self._last_t, self._last_tokens = now, real
            row.update(
                phase="train",
                loss=logs.get("loss"),
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens_per_second=tps,
                extra={
                    "padding_share": round(1.0 - real / total, 4) if total else 0.0,
                    "tokens": real,
                },
            )
        else:
            return  # the end-of-training summary: reported separately by the runner
        self.sink(row)


def _ppl(loss: float | None) -> float | None:
    if loss is None or math.isnan(loss):
        return None
    return math.exp(min(float(loss), 50.0))


class StopCallback(TrainerCallback):
    """On a stop request (SIGTERM): finish the current step, save a checkpoint at it (no
    evaluation first), then stop.

    `guard` is asked before every checkpoint (and every few seconds): when it says the job's
    lease is gone, training must not write anything more, so `on_lost` ends the process.
    `tracker` (core.training.stopping.StopTracker) learns the step and save times and tells
    the worker how long the stop may still take.
    """

    def __init__(
        self,
        stop: threading.Event,
        guard: Callable[[], bool] | None = None,
        on_lost: Callable[[], None] | None = None,
        guard_every_s: float = 2.0,
        on_checkpoint: Callable[[str, int], None] | None = None,
        tracker: Any = None,
    ) -> None:
        self.on_checkpoint = on_checkpoint
        self.stop = stop
        self.guard = guard
        self.on_lost = on_lost
        self.guard_every_s = guard_every_s
        self.tracker = tracker
        self._last_guard = 0.0
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.set_phase("train")

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.set_phase("finish")

    def on_step_begin(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.step_started()

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.progress()

    def on_step_end(self, args, state, control, **kwargs):
        # The ranks of a distributed job stop at the same step, whichever heard the request.
        if any_rank(self.stop.is_set(), args.device):
            # Save now, at this very step; an evaluation first would only delay the save.
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True
            self.stopped_early = True
        if self.tracker is not None:
            self.tracker.step_done(state.global_step)
            if control.should_save:
                self.tracker.save_started()
        saving = control.should_save or (
            args.save_strategy == "steps"
            and args.save_steps
            and args.save_steps >= 1
            and state.global_step % int(args.save_steps) == 0
        )
        now = time.monotonic()
        if self.guard is not None and (saving or now - self._last_guard >= self.guard_every_s):
            self._last_guard = now
            if not self.guard():
                if self.on_lost:
                    self.on_lost()
                control.should_save = False
                control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.save_done(state.global_step)
        if self.on_checkpoint is not None:
            self.on_checkpoint(
                f"{args.output_dir}/checkpoint-{state.global_step}", state.global_step
            )
