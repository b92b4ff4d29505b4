"""Chat as core sees it: permission checks, the adapter registry, the engine, feedback.

`ChatService` is what the Gradio app, the CLI and the benchmarks call. It re-reads the
adapter registry on every list and every request, so an adapter registered after the server
started is offered at once and a deleted one disappears (and is refused by name).
"""

from __future__ import annotations

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
    """A streamed answer: `note` is known before the first token (context truncation)."""

    adapter: str
    note: str
    _pieces: Iterator[str] = field(repr=False)

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
    ) -> Reply:
        """Start one streamed answer; raises AdapterUnavailable for an unknown name."""
        require(actor, "chat:use")
        settings = settings or GenerationSettings()
        name = adapter or BASE
        refs = self._refs()
        if name != BASE and name not in refs:
            raise AdapterUnavailable(name, sorted(refs))
        if name != BASE:
            self.inference.check_base(refs[name])
        prepared = self.inference.prepare(messages, settings)
        pieces = self.inference.stream(
            messages, adapter=name, settings=settings, refs=refs, prepared=prepared
        )
        return Reply(adapter=name, note=prepared.note, _pieces=pieces)

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
    """One rating of one answer, as the chat UI or the CLI sends it."""

    rating: Literal["up", "down"]
    adapter: str = BASE
    conversation: list[dict[str, str]] = Field(
        description="the messages before the answer, ending with the user's prompt"
    )
    answer: str
    correction: str | None = None
    comment: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("conversation")
    @classmethod
    def _ends_with_prompt(cls, v: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, m in enumerate(v):
            if m.get("role") not in ("system", "user", "assistant") or "content" not in m:
                raise ValueError(
                    f"message {i + 1}: needs 'role' (system, user or assistant) and 'content'"
                )
        if not v or v[-1].get("role") != "user" or not str(v[-1].get("content", "")).strip():
            raise ValueError("the conversation must end with the user's prompt")
        return [{"role": m["role"], "content": str(m["content"])} for m in v]

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


def feedback_dataset_name(adapter: str) -> str:
    """`feedback-<adapter>`; characters a dataset name cannot hold become '-'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", adapter or BASE).strip("-") or BASE
    return f"feedback-{safe}"[:128]


def _info(f: ChatFeedback) -> FeedbackInfo:
    return FeedbackInfo(
        f.id, f.created_at, f.username, f.adapter_name, f.adapter_id, f.rating, f.prompt,
        f.answer, f.correction, f.comment, f.dataset_id, f.sample_id,
    )


def record_feedback(
    db: Engine, actor: Principal, feedback: FeedbackIn, adapter_id: str | None = None
) -> FeedbackInfo:
    """Store the rating and add it as a pending sample to the adapter's feedback dataset.

    Row and sample are written in one transaction: either both exist or neither does. The
    sample's assistant turn is the correction when there is one (the original answer is kept
    in its metadata), so reviewers can accept it and train on it directly.
    """
    from core.datasets.service import SampleIn, get_or_create_dataset, insert_samples, sample_row

    adapter = feedback.adapter or BASE
    with audited(db, actor, "chat.feedback", target=adapter,
                 detail={"rating": feedback.rating}) as ctx:
        require(actor, "chat:use")
        if not feedback.answer.strip():
            raise FeedbackError("there is no answer to rate yet: ask something first")
        ds_name = feedback_dataset_name(adapter)
        # Creating the dataset is bookkeeping done for the chat user, who need not hold
        # datasets:create; the sample itself records who gave the feedback.
        ds = get_or_create_dataset(
            db, SYSTEM, ds_name,
            description=f"Feedback from the chat on {adapter!r} (ratings and corrections)",
            kind="feedback",
        )
        prompt = feedback.conversation[-1]["content"]
        system = next((m["content"] for m in feedback.conversation if m["role"] == "system"), None)
        turns = [m for m in feedback.conversation if m["role"] != "system"]
        final = feedback.correction if feedback.correction else feedback.answer
        with session_scope(db) as s:
            row = ChatFeedback(
                username=actor.username,
                adapter_name=adapter[:64],
                adapter_id=adapter_id,
                rating=feedback.rating,
                prompt=prompt,
                answer=feedback.answer,
                correction=feedback.correction,
                comment=feedback.comment,
                conversation=feedback.conversation,
                settings=feedback.settings,
                dataset_id=ds.id,
            )
            s.add(row)
            s.flush()
            sample = SampleIn(
                kind="chat",
                messages=[*turns, {"role": "assistant", "content": final}],
                system=system or None,
                provenance={
                    "source": "feedback",
                    "feedback_id": row.id,
                    "adapter": adapter,
                    "rating": feedback.rating,
                    "user": actor.username,
                },
                metadata={
                    "original_answer": feedback.answer,
                    "corrected": feedback.correction is not None,
                    "comment": feedback.comment,
                    "settings": feedback.settings,
                },
                status="pending",
            )
            [row.sample_id] = insert_samples(s, ds.id, [sample_row(ds.id, sample, actor.username)])
            ctx.detail.update({"feedback_id": row.id, "sample_id": row.sample_id,
                               "dataset": ds_name})
            s.flush()
            return _info(row)


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

    url: str  # includes a short-lived sign-in token when auth is on
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


def chat_embed(actor: Principal, settings: Settings | None = None) -> ChatEmbed:
    """The iframe URL for `actor`: the signed token hands the page's login to the server."""
    import httpx

    from core.serving.tokens import sign_embed_token

    require(actor, "chat:use")
    settings = settings or get_settings()
    base = chat_base_url(settings)
    url = f"{base}/"
    if settings.auth_enabled:
        url = f"{base}/clara/enter?token={sign_embed_token(actor.username, settings)}"
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
    return ChatEmbed(url=url, base_url=base, server_up=up, problem=problem)


def chat_adapters(db: Engine, actor: Principal) -> list[Any]:
    """The registered adapters (training's AdapterInfo), newest first, for the side panel."""
    from core.training.adapters import list_adapters

    require(actor, "chat:use")
    return sorted(list_adapters(db, SYSTEM), key=lambda a: a.created_at, reverse=True)
