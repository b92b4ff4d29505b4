"""Chat as core sees it: permission checks, the adapter registry, the engine, feedback.

`ChatService` is what the Gradio app, the CLI and the benchmarks call. It re-reads the
adapter registry on every list and every request, so an adapter registered after the server
started is offered at once and a deleted one disappears (and is refused by name).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Engine, func, select

from core.audit import audited
from core.auth import SYSTEM, Principal, require
from core.config import Settings, get_settings
from core.db import session_scope
from core.serving.answers import (
    AnswerStart,
    annotate_context,
    find_answer,
    new_answer_id,
    sample_turns,
    store_answer,
)
from core.serving.engine import (
    BASE,
    AdapterRef,
    AdapterUnavailable,
    GenerationSettings,
    InferenceEngine,
    ServingError,
)
from core.serving.models import ChatFeedback

Message = dict[str, str]

log = logging.getLogger("clara.chat")


# Registry ------------------------------------------------------------------------------------


def registered_adapters(db: Engine) -> list[AdapterRef]:
    """Every adapter in the training registry, as the engine needs it.

    Read as SYSTEM: whoever may chat (checked by the caller) may see what they can chat with.
    """
    from core.training.adapters import list_adapters

    return [
        AdapterRef(
            name=a.name,
            path=str(a.path),
            id=str(a.id),
            base_model=str(a.base_model or ""),
            base_model_fingerprint=str(a.base_model_fingerprint or ""),
        )
        for a in list_adapters(db, SYSTEM)
    ]


def resolve_base_model(settings: Settings | None = None) -> str:
    """CLARA_BASE_MODEL, or the demo model built under the data dir."""
    from core.training.base_model import resolve_base_model as resolve

    return str(resolve(settings))


QUANTIZATIONS = ("4bit", "8bit")


def engine_from_settings(
    settings: Settings | None = None, quantization: str | None = None
) -> InferenceEngine:
    """The engine for the configured base model; quantization from the argument or
    CLARA_CHAT_QUANTIZATION (4bit | 8bit, through bitsandbytes)."""
    settings = settings or get_settings()
    quant = quantization or os.environ.get("CLARA_CHAT_QUANTIZATION") or None
    if quant not in (None, *QUANTIZATIONS):
        raise ServingError(
            f"CLARA_CHAT_QUANTIZATION / --quantization: must be one of 4bit, 8bit (got {quant!r})"
        )
    return InferenceEngine(resolve_base_model(settings), quantization=quant)


# Replies ------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A streamed answer: `note` is known before the first token (context truncation).

    `answer_id` names the stored answer (kept when the stream ends, also when it is stopped
    early); feedback refers to it.
    """

    adapter: str
    note: str
    _pieces: Iterator[str] = field(repr=False)
    answer_id: str = ""
    dropped_turns: int = 0

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def text(self) -> str:
        return "".join(self._pieces)


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
        for ref in self._refs().values():
            try:
                self.inference.check_base(ref)
                out.append(AdapterChoice(ref.name, ref.id, ref.base_model, True))
            except ServingError as err:
                out.append(AdapterChoice(ref.name, ref.id, ref.base_model, False, str(err)))
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
    ) -> Reply:
        """Start one streamed answer; raises AdapterUnavailable for an unknown name.

        The answer is stored under a new id with the prompt the model saw (see
        core.serving.answers) once the stream ends; `session_id` is the chat session it
        belongs to, so that only that session can rate it.
        """
        require(actor, "chat:use")
        settings = settings or GenerationSettings()
        name = adapter or BASE
        refs = self._refs()
        if name != BASE and name not in refs:
            raise AdapterUnavailable(name, sorted(refs))
        if name != BASE:
            self.inference.check_base(refs[name])
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        prepared = self.inference.prepare(plain, settings)
        pieces = self.inference.stream(
            plain, adapter=name, settings=settings, refs=refs, prepared=prepared
        )
        kept = _kept_with_ids(messages, prepared.messages)
        start = AnswerStart(
            id=new_answer_id(),
            username=actor.username,
            session_id=session_id,
            adapter_name=name,
            adapter_id=refs[name].id if name in refs else None,
            context=annotate_context(self.db, actor.username, session_id, kept),
            settings=settings.model_dump(),
            dropped_turns=prepared.dropped_turns,
        )
        return Reply(
            adapter=name,
            note=prepared.note,
            _pieces=self._recorded(start, pieces),
            answer_id=start.id,
            dropped_turns=prepared.dropped_turns,
        )

    def _recorded(self, start: AnswerStart, pieces: Iterator[str]) -> Iterator[str]:
        text: list[str] = []
        complete = False
        try:
            for piece in pieces:
                text.append(piece)
                yield piece
            complete = True
        finally:
            try:
                store_answer(self.db, start, "".join(text), complete=complete)
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
            "loaded_adapters": list(s.loaded_adapters),
        }


# Feedback -----------------------------------------------------------------------------------


class FeedbackError(ServingError):
    pass


class FeedbackIn(BaseModel):
    """One rating of one stored answer, as the chat UI, the API or the CLI sends it.

    There is no answer text or conversation here on purpose: the server rates only what it
    generated itself (core.serving.answers), so a client cannot file made-up exchanges.
    """

    answer_id: str = Field(min_length=1, max_length=32)
    rating: Literal["up", "down"]
    correction: str | None = None
    comment: str = ""

    @field_validator("correction")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None


@dataclass(frozen=True)
class FeedbackInfo:
    id: int
    created_at: datetime
    username: str
    adapter_name: str
    adapter_id: str | None
    rating: str
    prompt: str
    answer: str
    correction: str | None
    comment: str
    dataset_id: int | None
    sample_id: int | None
    answer_id: str | None = None


def feedback_dataset_name(adapter: str) -> str:
    """`feedback-<adapter>`; characters a dataset name cannot hold become '-'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", adapter or BASE).strip("-") or BASE
    return f"feedback-{safe}"[:128]


def _info(f: ChatFeedback) -> FeedbackInfo:
    return FeedbackInfo(
        f.id, f.created_at, f.username, f.adapter_name, f.adapter_id, f.rating, f.prompt,
        f.answer, f.correction, f.comment, f.dataset_id, f.sample_id, f.answer_id,
    )


def record_feedback(
    db: Engine, actor: Principal, feedback: FeedbackIn, *, session_id: str | None = None
) -> FeedbackInfo:
    """Rate a stored answer and add the exchange as a pending sample of its feedback dataset.

    The answer must have been given to `actor` in the chat session `session_id` (None: no
    session, i.e. authentication off or the CLI), and may be rated once. The sample holds
    exactly that exchange as stored: the prompt the model saw, with only the rated model's
    own earlier answers as assistant turns (core.serving.answers.sample_turns), then the
    correction if there is one, else the answer (kept in the metadata either way).
    Row and sample are written in one transaction: either both exist or neither does.
    """
    from sqlalchemy.exc import IntegrityError

    from core.datasets.service import SampleIn, get_or_create_dataset, insert_samples, sample_row

    with audited(db, actor, "chat.feedback", target=feedback.answer_id,
                 detail={"rating": feedback.rating}) as ctx:
        require(actor, "chat:use")
        answer = find_answer(db, actor, feedback.answer_id, session_id)
        if answer is None:
            raise FeedbackError(
                f"answer {feedback.answer_id!r} is unknown or was not given in this chat "
                "session; only answers the chat gave you in this session can be rated"
            )
        if not answer.answer.strip():
            raise FeedbackError("that answer is empty: there is nothing to rate")
        with session_scope(db) as s:
            done = s.scalar(select(ChatFeedback.id).where(ChatFeedback.answer_id == answer.id))
        if done is not None:
            raise FeedbackError(f"this answer was already rated (feedback #{done})")
        adapter = answer.adapter_name
        ctx.detail["adapter"] = adapter
        ds_name = feedback_dataset_name(adapter)
        # Creating the dataset is bookkeeping done for the chat user, who need not hold
        # datasets:create; the sample itself records who gave the feedback.
        ds = get_or_create_dataset(
            db, SYSTEM, ds_name,
            description=f"Feedback from the chat on {adapter!r} (ratings and corrections)",
            kind="feedback",
        )
        turns = sample_turns(answer.context, adapter)
        prompt = next((m["content"] for m in reversed(turns.messages)
                       if m["role"] == "user"), "")
        final = feedback.correction if feedback.correction else answer.answer
        try:
            with session_scope(db) as s:
                row = ChatFeedback(
                    username=actor.username,
                    adapter_name=adapter[:64],
                    adapter_id=answer.adapter_id,
                    rating=feedback.rating,
                    prompt=prompt,
                    answer=answer.answer,
                    correction=feedback.correction,
                    comment=feedback.comment,
                    conversation=answer.context,
                    settings=answer.settings,
                    dataset_id=ds.id,
                    answer_id=answer.id,
                )
                s.add(row)
                s.flush()
                sample = SampleIn(
                    kind="chat",
                    messages=[*turns.messages, {"role": "assistant", "content": final}],
                    system=turns.system,
                    provenance={
                        "source": "feedback",
                        "feedback_id": row.id,
                        "answer_id": answer.id,
                        "adapter": adapter,
                        "rating": feedback.rating,
                        "user": actor.username,
                    },
                    metadata={
                        "original_answer": answer.answer,
                        "corrected": feedback.correction is not None,
                        "comment": feedback.comment,
                        "settings": answer.settings,
                        "omitted_answers": turns.omitted_answers,
                        "dropped_turns": answer.dropped_turns,
                    },
                    status="pending",
                )
                [row.sample_id] = insert_samples(
                    s, ds.id, [sample_row(ds.id, sample, actor.username)]
                )
                ctx.detail.update({"feedback_id": row.id, "sample_id": row.sample_id,
                                   "dataset": ds_name})
                s.flush()
                return _info(row)
        except IntegrityError:  # rated at the same moment by a second request
            raise FeedbackError("this answer was already rated") from None


def list_feedback(
    db: Engine,
    actor: Principal,
    *,
    adapter: str | None = None,
    username: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[FeedbackInfo], int]:
    """A page of feedback, newest first, and the total count.

    People see their own feedback; reviewers (datasets:review) see everyone's.
    """
    require(actor, "chat:use")
    conds = []
    if not actor.can("datasets:review"):
        username = actor.username
    if username:
        conds.append(ChatFeedback.username == username)
    if adapter:
        conds.append(ChatFeedback.adapter_name == adapter)
    with session_scope(db) as s:
        total = s.scalar(select(func.count()).select_from(ChatFeedback).where(*conds)) or 0
        rows = s.scalars(
            select(ChatFeedback).where(*conds).order_by(ChatFeedback.id.desc())
            .offset(offset).limit(limit)
        ).all()
        return [_info(r) for r in rows], total


def adapter_lineage(db: Engine, actor: Principal, name: str) -> dict[str, Any]:
    """The registry's lineage of one adapter (dataset version, job, base), for the page."""
    from core.training.adapters import lineage

    require(actor, "adapters:read")
    result = lineage(db, actor, name)
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if hasattr(result, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(result)
    return dict(result)


__all__ = [
    "BASE",
    "AdapterChoice",
    "ChatService",
    "FeedbackError",
    "FeedbackIn",
    "FeedbackInfo",
    "Reply",
    "ChatEmbed",
    "adapter_lineage",
    "chat_adapters",
    "chat_base_url",
    "chat_embed",
    "engine_from_settings",
    "feedback_dataset_name",
    "list_feedback",
    "record_feedback",
    "registered_adapters",
    "resolve_base_model",
]


# For the Streamlit Chat page ----------------------------------------------------------------


@dataclass(frozen=True)
class ChatEmbed:
    """Where the page points its iframe, and whether the chat server answers there."""

    url: str  # with auth on: includes a single-use sign-in token ("" while the server is down)
    base_url: str
    server_up: bool
    problem: str = ""


def chat_base_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.chat_public_url:
        return settings.chat_public_url.rstrip("/")
    host = settings.chat_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is not an address a browser can open
    return f"http://{host}:{settings.chat_port}"


def chat_embed(
    actor: Principal,
    settings: Settings | None = None,
    *,
    db: Engine | None = None,
    parent_id: str | None = None,
) -> ChatEmbed:
    """The iframe URL for `actor`, and whether the chat server answers.

    With authentication on, the URL carries a single-use hand-over token (core.sessions)
    that the chat server redeems for a chat session; `parent_id` is the web session it is
    issued from, so that logging out of the web app also ends the chat. The token is issued
    only when the server answers (nothing would redeem it otherwise).
    """
    import httpx

    require(actor, "chat:use")
    settings = settings or get_settings()
    base = chat_base_url(settings)
    problem = ""
    try:
        health = httpx.get(f"{base}/clara/health", timeout=3).json()
        up = health.get("status") == "ok"
    except (httpx.HTTPError, ValueError) as err:
        up = False
        problem = (
            f"The chat server does not answer at {base} ({type(err).__name__}). Right after "
            "`clara up` it may still be loading the base model (the first start builds the "
            "demo model: a few minutes on a CPU; see "
            f"{settings.data_path / 'logs' / 'chat.log'}). Otherwise start it with "
            "`clara chat` (or `clara up` with CLARA_START_CHAT=true). Then reload this page."
        )
    url = f"{base}/"
    if settings.auth_enabled:
        url = ""
        if up:
            from core.serving.tokens import HANDOVER_PURPOSE
            from core.sessions import issue_handover

            if db is None:
                raise ValueError("chat_embed needs the database to issue a sign-in token")
            token = issue_handover(db, actor, purpose=HANDOVER_PURPOSE, parent_id=parent_id)
            url = f"{base}/clara/enter?token={token}"
    return ChatEmbed(url=url, base_url=base, server_up=up, problem=problem)


def chat_adapters(db: Engine, actor: Principal) -> list[Any]:
    """The registered adapters (training's AdapterInfo), newest first, for the side panel."""
    from core.training.adapters import list_adapters

    require(actor, "chat:use")
    return sorted(list_adapters(db, SYSTEM), key=lambda a: a.created_at, reverse=True)
