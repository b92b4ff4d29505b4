"""Batched generation: concurrent requests for one base model share each forward pass.

One thread per engine owns the model (`BatchScheduler`). Requests queue up; the thread
waits a short gather window, so that clients arriving together share a batch, then runs one
`generate` over the queued requests that can share it (same group key: the sampling
settings, and the adapter where PEFT cannot mix it with others), left-padded with an
attention mask. Requests arriving while a batch runs go into the next one: continuous
batching would need a decoding loop of our own instead of `generate`.

Each request still streams on its own: `BatchStreamer` turns every step's (batch,) tokens
into each row's text, and ends a row at its own eos, max_new_tokens, stop string or
cancellation while the other rows go on. `GenerationStream` is what the caller iterates.

Imports torch and transformers: the engine imports this module only when it loads a model.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from core.serving.engine import ServingError

FinishReason = Literal["stop", "length", "cancelled"]
_END = object()  # the last event of a request that finished (its reason is on the request)


class Request:
    """One prompt, queued or generating; the scheduler thread is the only one finishing it."""

    def __init__(
        self,
        prompt_ids: list[int],
        *,
        key: Hashable,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        payload: Any = None,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.key = key
        self.max_new_tokens = max_new_tokens
        self.stop = tuple(stop)
        self.payload = payload  # what the engine's batch runner needs (adapter, settings)
        self.cancelled = threading.Event()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.failed = False

    @property
    def open(self) -> bool:
        return self.finish_reason is None and not self.failed

    def send(self, text: str) -> None:
        if text:
            self.events.put(text)

    def finish(self, reason: FinishReason) -> None:
        if self.open:
            self.finish_reason = reason
            self.events.put(_END)

    def fail(self, err: BaseException) -> None:
        if self.open:
            self.failed = True
            self.events.put(as_serving_error(err))


def as_serving_error(err: BaseException) -> ServingError:
    """Our own errors as they are; anything else as a new ServingError per consumer, because
    one exception object raised in several threads at once gets its tracebacks mixed."""
    if isinstance(err, ServingError):
        return err
    failure = ServingError(f"generation failed: {err}")
    failure.__cause__ = err
    return failure


class GenerationStream(Iterator[str]):
    """An answer's text pieces; once exhausted, its token counts and why it ended."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._closed = False
        # A stream dropped without close() (a client that went away) frees its row as well.
        weakref.finalize(self, request.cancelled.set)

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        item = self._request.events.get()
        if isinstance(item, str):
            return item
        self._closed = True
        if isinstance(item, BaseException):
            raise item
        raise StopIteration

    def close(self) -> None:
        """Stop this answer only; the other rows of its batch go on."""
        if not self._closed:
            self._closed = True
            self._request.cancelled.set()

    @property
    def prompt_tokens(self) -> int:
        return len(self._request.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return self._request.completion_tokens

    @property
    def finish_reason(self) -> FinishReason | None:
        if self._request.finish_reason is None and self._request.cancelled.is_set():
            return "cancelled"
        return self._request.finish_reason


class _Row:
    """One request's text inside a running batch.

    Text is decoded TGI-style from the tokens since the last released piece (with the one
    before as context, so that a tokenizer's leading-space rules see what they need) and is
    released only when it does not end in U+FFFD, the mark of a character whose bytes are
    still incomplete. Text that could be the start of a stop string is held back until it
    is clear that it is not one.
    """

    def __init__(self, request: Request, tokenizer: PreTrainedTokenizerBase) -> None:
        self.request = request
        self._tokenizer = tokenizer
        self._tokens: list[int] = []
        self._prefix = 0  # first token of the decoding context
        self._read = 0  # first token not yet turned into text
        self._text = ""
        self._sent = 0  # characters of _text handed to the consumer

    def add(self, token: int, eos: frozenset[int]) -> None:
        req = self.request
        if req.cancelled.is_set():
            req.finish("cancelled")
            return
        req.completion_tokens += 1
        if token in eos:
            self.close("stop")
            return
        self._tokens.append(token)
        self._decode()
        self._release()
        if req.open and req.completion_tokens >= req.max_new_tokens:
            self.close("length")

    def close(self, reason: FinishReason) -> None:
        """Flush what was held back (an incomplete character, the start of a stop string
        that never came), then finish."""
        self._decode(final=True)
        cut = self._first_stop()  # the flushed character may complete one after all
        self._send_to(len(self._text) if cut is None else cut)
        self.request.finish(reason if cut is None else "stop")

    def _decode(self, final: bool = False) -> None:
        decode = self._tokenizer.decode
        before = decode(self._tokens[self._prefix : self._read], skip_special_tokens=True)
        now = decode(self._tokens[self._prefix :], skip_special_tokens=True)
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self._text += now[len(before) :]
            self._prefix, self._read = self._read, len(self._tokens)

    def _release(self) -> None:
        cut = self._first_stop()
        if cut is not None:
            self._send_to(cut)
            self.request.finish("stop")
            return
        self._send_to(len(self._text) - _stop_prefix_len(self._text, self.request.stop))

    def _first_stop(self) -> int | None:
        # Text already sent never holds a stop string, nor the start of one: search after it.
        found = (self._text.find(s, self._sent) for s in self.request.stop)
        return min((i for i in found if i >= 0), default=None)

    def _send_to(self, end: int) -> None:
        if end > self._sent:
            self.request.send(self._text[self._sent : end])
            self._sent = end


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that a stop string begins with."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class BatchStreamer(BaseStreamer):
    """Hands each step's tokens to the rows of the batch, in row order."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, requests: list[Request], eos: frozenset[int]
    ) -> None:
        self.rows = [_Row(r, tokenizer) for r in requests]
        self._eos = eos
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the (padded) prompts
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.tolist(), strict=True):
            if row.request.open:
                row.add(token, self._eos)

    def end(self) -> None:
        for row in self.rows:
            if row.request.open:
                row.close("length")

    def stopping_criteria(self, prompt_width: int) -> RowsDone:
        return RowsDone([row.request for row in self.rows], prompt_width)


class RowsDone(StoppingCriteria):
    """Per row: finished (eos or stop string, seen by the streamer), cancelled, or at its
    own max_new_tokens. generate() pads a finished row from then on and stops when none
    is left; the batch as a whole runs to its longest max_new_tokens."""

    def __init__(self, requests: list[Request], prompt_width: int) -> None:
        self._requests = requests
        self._prompt_width = prompt_width
        self._none_done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        steps = input_ids.shape[1] - self._prompt_width
        flags = [
            not r.open or r.cancelled.is_set() or steps >= r.max_new_tokens for r in self._requests
        ]
        # On the ids' device: generate() combines the flags with its own there. The usual
        # answer, no row done, is made once: a tensor per step costs a single stream ~2 %.
        if any(flags):
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)
        if self._none_done is None:
            self._none_done = torch.zeros(len(flags), dtype=torch.bool, device=input_ids.device)
        return self._none_done


def left_padded(
    requests: list[Request], pad_token_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts right-aligned (decoder-only models continue at the end), with the mask."""
    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.full((len(requests), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, r in enumerate(requests):
        n = len(r.prompt_ids)
        ids[i, width - n :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask[i, width - n :] = 1
    return ids.to(device), mask.to(device)


_schedulers: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A generation thread still alive while the interpreter shuts down can abort the
    # process (torch's thread pool is torn down under it): `clara generate` would exit 134.
    for scheduler in list(_schedulers):
        scheduler.stop()


class BatchScheduler:
    """The queue and the one thread that serves it.

    The thread is started by the first request and ends after `idle_s` without any, so an
    engine that is no longer used does not keep a thread (and, through it, its model).
    """

    def __init__(
        self,
        run: Callable[[list[Request]], None],
        *,
        window_s: float,
        max_batch: int,
        context_limit: int,
        idle_s: float = 30.0,
    ) -> None:
        self._run = run
        self._window_s = window_s
        self._max_batch = max_batch
        self._context_limit = context_limit
        self._idle_s = idle_s
        self._pending: list[Request] = []
        self._running: list[Request] = []
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        _schedulers.add(self)

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._stopping:
                request.fail(ServingError("the chat engine is shutting down"))
                return
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="clara-generate", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        """Cancel every request and wait for the thread to end (at interpreter exit)."""
        with self._cond:
            self._stopping = True
            for r in self._pending + self._running:
                r.cancelled.set()
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _serve(self) -> None:
        expect = self._max_batch  # the thread was idle until the request that started it
        while (batch := self._next_batch(expect)) is not None:
            if batch:
                self._running = batch
                self._run_batch(batch)
                self._running = []
                expect = len(batch)

    def _next_batch(self, expect: int) -> list[Request] | None:
        """The next batch, after waiting (at most the gather window) until `expect` requests
        are queued. After a batch that is as many as it had: clients whose answers just
        ended tend to send their next request at once, and a batch started without them
        would make them wait for it; a lone client is not held up at all. After an idle
        spell longer than the window it is a full batch, since anyone may be arriving."""
        with self._cond:
            if not self._pending:
                idle_since = time.monotonic()
                self._cond.wait_for(lambda: self._pending or self._stopping, timeout=self._idle_s)
                if not self._pending:
                    self._thread = None
                    return None
                if time.monotonic() - idle_since > self._window_s:
                    expect = self._max_batch
            self._cond.wait_for(lambda: len(self._pending) >= expect, timeout=self._window_s)
            return self._take()

    def _take(self) -> list[Request]:
        """The oldest request and the later ones of its group that fit beside it (FIFO)."""
        for r in self._pending:
            if r.cancelled.is_set():
                r.finish("cancelled")
        self._pending = [r for r in self._pending if r.open]
        batch: list[Request] = []
        for r in self._pending:
            if len(batch) == self._max_batch:
                break
            if not batch or (r.key == batch[0].key and self._fits([*batch, r])):
                batch.append(r)
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _fits(self, batch: list[Request]) -> bool:
        # Every row runs as many steps as the longest max_new_tokens, and a row's positions
        # run on from its own prompt: the longest prompt plus those steps must fit.
        longest = max(len(r.prompt_ids) for r in batch)
        return longest + max(r.max_new_tokens for r in batch) <= self._context_limit

    def _run_batch(self, batch: list[Request]) -> None:
        try:
            self._run(batch)
        except BaseException as err:  # every consumer of the batch hears of it
            for r in batch:
                r.fail(err)
            if not isinstance(err, Exception):
                raise
