"""Chat replies as core sees it: the engine for the configured base model, and `ChatService`.

`ChatService` is what the Gradio app, the CLI and the benchmarks call. It re-reads the
adapter registry on every list and every request, so an adapter registered after the server
started is offered at once and a deleted one disappears (and is refused by name). Every
answer is stored under an id (core.serving.answers) that feedback refers to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine

from core.config import Settings, get_settings
from core.learning.lines import LINE_PREFIX, LineNotFound, list_lines, served_adapter
from core.ops.measures import observe_generation
from core.permissions import SYSTEM, Principal, require
from core.serving.adapters import registered_adapters
from core.serving.answers import AnswerStart, annotate_context, new_answer_id, store_answer
from core.serving.engine import (
    BASE,
    AdapterRef,
    AdapterUnavailable,
    GenerationSettings,
    InferenceEngine,
    PreparedPrompt,
    ServingError,
)

if TYPE_CHECKING:
    from core.serving.batching import GenerationStream

Message = dict[str, str]

log = logging.getLogger("clara.chat")

QUANTIZATIONS = ("4bit", "8bit")


def engine_from_settings(
    settings: Settings | None = None, quantization: str | None = None
) -> InferenceEngine:
    """The engine for the configured base model (CLARA_BASE_MODEL, or the demo model built
    under the data dir); quantization from the argument or settings.chat_quantization
    (CLARA_CHAT_QUANTIZATION; 4bit | 8bit, through bitsandbytes)."""
    from core.training.base_model import resolve_base_model

    settings = settings or get_settings()
    quant = quantization or settings.chat_quantization or None
    if quant not in (None, *QUANTIZATIONS):
        raise ServingError(
            f"CLARA_CHAT_QUANTIZATION / --quantization: must be one of 4bit, 8bit (got {quant!r})"
        )
    return InferenceEngine(
        str(resolve_base_model(settings)),
        quantization=quant,
        batch_window_ms=settings.serving_batch_window_ms,
        max_batch=settings.serving_max_batch,
    )


@dataclass
class Reply:
    """A streamed answer: `note` is known before the first token (context truncation).

    `answer_id` names the stored answer (kept when the stream ends, also when it is stopped
    early); feedback refers to it. The token counts and `finish_reason` ("stop", "length",
    "cancelled") are final once the pieces are exhausted or the reply is closed.
    """

    adapter: str
    note: str
    _pieces: Generator[str, None, None] = field(repr=False)
    _stream: GenerationStream = field(repr=False)
    answer_id: str = ""
    dropped_turns: int = 0

    def __iter__(self) -> Generator[str, None, None]:
        return self._pieces

    def text(self) -> str:
        return "".join(self._pieces)

    def close(self) -> None:
        """Stop generating this answer (what is stored says it is incomplete)."""
        self._pieces.close()
        self._stream.close()  # also when the pieces were never started

    @property
    def prompt_tokens(self) -> int:
        return self._stream.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._stream.completion_tokens

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason


@dataclass(frozen=True)
class AdapterChoice:
    name: str
    id: str | None
    base_model: str
    compatible: bool
    problem: str = ""


def _kept_with_ids(
    messages: list[dict[str, Any]], kept: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """The prepared prompt, with the `answer_id` the caller gave for its assistant turns.

    `prepare` keeps a suffix of the turns (plus the settings' system prompt); the ids are
    carried over by matching the assistant turns from the end.
    """
    given = [m for m in messages if m.get("role") == "assistant"]
    out = [dict(m) for m in kept]
    ours = [m for m in out if m["role"] == "assistant"]
    for mine, theirs in zip(reversed(ours), reversed(given), strict=False):
        if theirs.get("answer_id") and theirs.get("content") == mine["content"]:
            mine["answer_id"] = str(theirs["answer_id"])
    return out


class ChatService:
    def __init__(self, db: Engine, inference: InferenceEngine) -> None:
        self.db = db
        self.inference = inference

    def _refs(self) -> dict[str, AdapterRef]:
        refs = {r.name: r for r in registered_adapters(self.db)}
        self.inference.sync(list(refs.values()))
        return refs

    def adapters(self, actor: Principal) -> list[AdapterChoice]:
        """What the picker offers: base first, then every registered adapter.

        Adapters for another base model are listed as incompatible (with the reason) so
        that a person understands why they cannot pick them.
        """
        require(actor, "chat:use")
        out = [AdapterChoice(BASE, None, self.inference.base_model, True)]
        refs = self._refs()
        for ref in refs.values():
            try:
                self.inference.check_base(ref)
                out.append(AdapterChoice(ref.name, ref.id, ref.base_model, True))
            except ServingError as err:
                out.append(AdapterChoice(ref.name, ref.id, ref.base_model, False, str(err)))
        # Each adapter line, as "line:NAME": whatever adapter is active in it when asked.
        usable = {a.name: a for a in out}
        for line in list_lines(self.db, SYSTEM):  # whoever may chat may see the lines
            active = usable.get(line.active_adapter)
            out.append(
                AdapterChoice(
                    line.served_as,
                    active.id if active else None,
                    line.base_model,
                    bool(active and active.compatible),
                    active.problem if active else f"its adapter {line.active_adapter!r} is gone",
                )
            )
        return out

    def adapter_names(self, actor: Principal) -> list[str]:
        return [a.name for a in self.adapters(actor) if a.compatible]

    def reply(
        self,
        actor: Principal,
        messages: list[Message],
        adapter: str | None = None,
        settings: GenerationSettings | None = None,
        *,
        session_id: str | None = None,
        fit: Literal["shorten", "refuse"] = "shorten",
    ) -> Reply:
        """Start one streamed answer; raises AdapterUnavailable for an unknown name.

        The answer is stored under a new id with the prompt the model saw (see
        core.serving.answers) once the stream ends; `session_id` is the chat session it
        belongs to, so that only that session can rate it. A conversation over the context
        is shortened from the front with a note, or refused (ContextTooLong) with
        `fit="refuse"`.
        """
        require(actor, "chat:use")
        settings = settings or GenerationSettings()
        name, refs = self._checked(adapter)
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        prepared = self.inference.prepare(plain, settings)
        if fit == "refuse":
            prepared.refuse_if_shortened()
        kept = _kept_with_ids(messages, prepared.messages)
        context = annotate_context(self.db, actor.username, session_id, kept)
        return self._start(actor, name, refs, prepared, settings, context, session_id)

    def complete(
        self,
        actor: Principal,
        prompt: str,
        adapter: str | None = None,
        settings: GenerationSettings | None = None,
    ) -> Reply:
        """Continue a plain text (no chat template); over the context is refused."""
        require(actor, "chat:use")
        settings = settings or GenerationSettings()
        name, refs = self._checked(adapter)
        prepared = self.inference.prepare_text(prompt, settings)
        context = [{"role": "user", "content": prompt, "adapter": None, "completion": True}]
        return self._start(actor, name, refs, prepared, settings, context, None)

    def _checked(self, adapter: str | None) -> tuple[str, dict[str, AdapterRef]]:
        """The adapter's name and the registry, refusing an unknown or foreign adapter. A
        line ("line:NAME") is its active adapter at this moment."""
        name = adapter or BASE
        if name.startswith(LINE_PREFIX):
            try:
                name = served_adapter(self.db, name)
            except LineNotFound:
                raise AdapterUnavailable(name, sorted(self._refs())) from None
        refs = self._refs()
        if name != BASE and name not in refs:
            raise AdapterUnavailable(name, sorted(refs))
        if name != BASE:
            self.inference.check_base(refs[name])
        return name, refs

    def _start(
        self,
        actor: Principal,
        name: str,
        refs: dict[str, AdapterRef],
        prepared: PreparedPrompt,
        settings: GenerationSettings,
        context: list[dict[str, Any]],
        session_id: str | None,
    ) -> Reply:
        stream = self.inference.stream(
            prepared.messages, adapter=name, settings=settings, refs=refs, prepared=prepared
        )
        start = AnswerStart(
            id=new_answer_id(),
            username=actor.username,
            session_id=session_id,
            adapter_name=name,
            adapter_id=refs[name].id if name in refs else None,
            context=context,
            settings=settings.model_dump(),
            dropped_turns=prepared.dropped_turns,
        )
        return Reply(
            adapter=name,
            note=prepared.note,
            _pieces=self._recorded(start, stream),
            _stream=stream,
            answer_id=start.id,
            dropped_turns=prepared.dropped_turns,
        )

    def _recorded(self, start: AnswerStart, stream: GenerationStream) -> Generator[str, None, None]:
        text: list[str] = []
        outcome = "stopped"  # the consumer closed the reply before the end
        began = time.perf_counter()
        first: float | None = None
        try:
            for piece in stream:
                if first is None:
                    first = time.perf_counter() - began
                text.append(piece)
                yield piece
            outcome = "complete"
        except Exception:
            outcome = "error"
            raise
        finally:
            stream.close()  # a reply abandoned mid-way frees its row of the batch at once
            observe_generation(
                outcome,
                time.perf_counter() - began,
                first,
                stream.prompt_tokens,
                stream.completion_tokens,
            )
            try:
                store_answer(self.db, start, "".join(text), complete=outcome == "complete")
            except Exception:  # never hide the generation's own error behind this one
                log.exception("could not store chat answer %s", start.id)

    def health(self) -> dict[str, Any]:
        s = self.inference.stats
        return {
            "status": "ok",
            "base_model": self.inference.base_model,
            "base_loaded": self.inference._model is not None,
            "base_loads": s.base_loads,
            "adapter_loads": s.adapter_loads,
            "switches": s.switches,
            "last_switch_ms": round(s.last_switch_ms, 3),
            "generations": s.generations,
            "batches": s.batches,
            "max_batch_size": s.max_batch_size,
            "loaded_adapters": list(s.loaded_adapters),
        }
