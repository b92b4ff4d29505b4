"""Answers the chat server issued: stored with their prompt, so feedback can only rate them.

Every answer the chat generates gets a random id and a row in `chat_answers` holding exactly
what the model was given (after the context limit), who asked and in which chat session.
Feedback names such an id; the feedback sample is built from the row, never from text a
client sends. Assistant turns in the stored prompt say which model wrote them: only turns
of the rated model become assistant turns of a sample (another model's answer, or text the
server cannot vouch for, is left out; the user turns around it stay as prompt context).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select

from core.db import reading, writing
from core.permissions import Principal
from core.serving.models import ChatAnswer

log = logging.getLogger("clara.chat")

Message = dict[str, str]


def new_answer_id() -> str:
    """24 URL-safe random characters (144 bits): unguessable, so ids can be shown freely."""
    return secrets.token_urlsafe(18)


def _same_session(session_id: str | None):
    if session_id is None:
        return ChatAnswer.session_id.is_(None)
    return ChatAnswer.session_id == session_id


def annotate_context(
    db: Engine, username: str, session_id: str | None, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The prompt as stored: each assistant turn marked with the model that wrote it.

    An assistant turn counts as a model's only if it is, word for word, an answer this server
    gave the same user in the same chat session (found by the turn's `answer_id` when the
    caller passes one, else by its text). Anything else gets `"adapter": None`.
    """
    wanted = [m for m in messages if m.get("role") == "assistant"]
    found: dict[str, str] = {}  # answer_id or text -> adapter
    by_text: dict[str, str] = {}
    if wanted:
        ids = [str(m["answer_id"]) for m in wanted if m.get("answer_id")]
        texts = [str(m.get("content", "")) for m in wanted]
        with reading(db) as s:
            rows = s.execute(
                select(ChatAnswer.id, ChatAnswer.answer, ChatAnswer.adapter_name).where(
                    ChatAnswer.username == username,
                    _same_session(session_id),
                    or_(ChatAnswer.id.in_(ids), ChatAnswer.answer.in_(texts)),
                )
            ).all()
        for answer_id, text, adapter in rows:
            found[answer_id] = adapter
            by_text.setdefault(text, adapter)
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = str(m.get("role")), str(m.get("content", ""))
        if role != "assistant":
            out.append({"role": role, "content": content})
            continue
        given = m.get("answer_id")
        adapter = found.get(str(given)) if given and str(given) in found else by_text.get(content)
        out.append({"role": role, "content": content, "adapter": adapter})
    return out


@dataclass(frozen=True)
class AnswerStart:
    """What is known about an answer before its first token."""

    id: str
    username: str
    session_id: str | None
    adapter_name: str
    adapter_id: str | None
    context: list[dict[str, Any]]
    settings: dict[str, Any]
    dropped_turns: int


def store_answer(db: Engine, start: AnswerStart, text: str, *, complete: bool) -> None:
    """Keep the answer (also a partial one, when the stream was stopped)."""
    with writing(db) as s:
        s.add(
            ChatAnswer(
                id=start.id,
                username=start.username,
                session_id=start.session_id,
                adapter_name=start.adapter_name[:64],
                adapter_id=start.adapter_id,
                context=start.context,
                answer=text,
                settings=start.settings,
                dropped_turns=start.dropped_turns,
                complete=complete,
            )
        )


def find_answer(
    db: Engine, actor: Principal, answer_id: str, session_id: str | None
) -> ChatAnswer | None:
    """The stored answer, only if it was given to `actor` in this chat session.

    With a session (authentication on), the answer must come from the same session; without
    one (authentication off, the CLI) from a session-less request of the same user.
    """
    with reading(db) as s:
        row = s.get(ChatAnswer, answer_id)
        if row is None or row.username != actor.username:
            return None
        if row.session_id != session_id:
            return None
        s.expunge(row)
        return row


@dataclass(frozen=True)
class SampleTurns:
    system: str | None
    messages: list[Message]
    omitted_answers: int  # assistant turns of other models (or unknown origin) left out


def sample_turns(context: list[dict[str, Any]], adapter: str) -> SampleTurns:
    """The stored prompt as a sample of `adapter`: its own answers, user and system turns.

    Another model's answer is dropped; the user turns on either side of it are joined (so
    roles still alternate), keeping what the person asked as prompt context.
    """
    system = None
    out: list[Message] = []
    omitted = 0
    for m in context:
        role, content = m["role"], m["content"]
        if role == "system":
            system = content if system is None else f"{system}\n\n{content}"
            continue
        if role == "assistant" and m.get("adapter") != adapter:
            omitted += 1
            continue
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": f"{out[-1]['content']}\n\n{content}"}
        else:
            out.append({"role": role, "content": content})
    while out and out[0]["role"] != "user":  # a sample starts with the person's turn
        out.pop(0)
    return SampleTurns(system, out, omitted)
