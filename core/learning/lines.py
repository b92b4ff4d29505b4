"""Adapter lines: a named sequence of adapters on one base model, one of them active.

Chat and the API serve a line as "line:NAME", i.e. whatever adapter is active when a request
arrives, so a new activation takes effect with the next answer and without a reload. Every
change of the active adapter is recorded (who, what, when, why) and audited; a rollback
makes any adapter the line has served before active again.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Engine, select

from core.audit import audited
from core.db import reading, writing
from core.errors import ClaraError, Conflict, NotFound
from core.learning.models import AdapterLine, LineActivation
from core.permissions import Principal, require
from core.training.models import Adapter
from core.training.spec import NAME_RE

LINE_PREFIX = "line:"


class LineError(ClaraError, ValueError):
    pass


class LineNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no adapter line {name!r}; `clara learn line list` shows them")


class Activation(BaseModel):
    action: str
    adapter_id: int | None
    adapter_name: str
    previous_adapter_name: str | None
    actor: str
    reason: str
    at: datetime


class LineInfo(BaseModel):
    id: int
    name: str
    base_model: str
    base_model_fingerprint: str
    active_adapter_id: int
    active_adapter: str
    description: str
    created_by: str
    created_at: datetime
    history: list[Activation] = []

    @property
    def served_as(self) -> str:
        return f"{LINE_PREFIX}{self.name}"


def _adapter(s, ref: str | int) -> Adapter:
    from core.training.adapters import AdapterNotFound

    row = s.get(Adapter, int(ref)) if str(ref).isdigit() else None
    row = row or s.scalar(select(Adapter).where(Adapter.name == str(ref)))
    if row is None:
        raise AdapterNotFound(ref)
    return row


def _line(s, name: str) -> AdapterLine:
    row = s.scalar(select(AdapterLine).where(AdapterLine.name == name))
    if row is None:
        raise LineNotFound(name)
    return row


def _info(s, line: AdapterLine, history: bool = False) -> LineInfo:
    active = s.get(Adapter, line.active_adapter_id)
    info = LineInfo(
        id=line.id,
        name=line.name,
        base_model=line.base_model,
        base_model_fingerprint=line.base_model_fingerprint,
        active_adapter_id=line.active_adapter_id,
        active_adapter=active.name if active else "?",
        description=line.description,
        created_by=line.created_by,
        created_at=line.created_at,
    )
    if history:
        rows = s.scalars(
            select(LineActivation)
            .where(LineActivation.line_id == line.id)
            .order_by(LineActivation.id.desc())
        )
        info.history = [Activation.model_validate(r, from_attributes=True) for r in rows]
    return info


def create_line(
    engine: Engine, actor: Principal, name: str, adapter: str | int, description: str = ""
) -> LineInfo:
    """A new line whose first (and active) adapter is `adapter`, any registered one."""
    with audited(engine, actor, "learning.line.create", target=name) as ctx:
        require(actor, "adapters:activate")
        if not NAME_RE.match(name or ""):
            raise LineError(f"line name {name!r}: use 1-64 characters of a-z, 0-9, '_' or '-'")
        with writing(engine) as s:
            if s.scalar(select(AdapterLine.id).where(AdapterLine.name == name)) is not None:
                raise Conflict(f"an adapter line named {name!r} already exists")
            first = _adapter(s, adapter)
            line = AdapterLine(
                name=name,
                base_model=first.base_model,
                base_model_fingerprint=first.base_model_fingerprint,
                active_adapter_id=first.id,
                description=description,
                created_by=actor.username,
            )
            s.add(line)
            s.flush()
            s.add(
                LineActivation(
                    line_id=line.id,
                    action="create",
                    adapter_id=first.id,
                    adapter_name=first.name,
                    actor=actor.username,
                    reason=description or "line created",
                )
            )
            ctx.detail.update(adapter=first.name, base_model=first.base_model)
            return _info(s, line, history=True)


def list_lines(engine: Engine, actor: Principal) -> list[LineInfo]:
    require(actor, "adapters:read")
    with reading(engine) as s:
        return [_info(s, r) for r in s.scalars(select(AdapterLine).order_by(AdapterLine.name))]


def get_line(engine: Engine, actor: Principal, name: str) -> LineInfo:
    """The line with its activation history, newest first."""
    require(actor, "adapters:read")
    with reading(engine) as s:
        return _info(s, _line(s, name), history=True)


def activate(
    engine: Engine,
    actor: Principal,
    line_name: str,
    adapter: str | int,
    *,
    reason: str = "",
    action: str = "activate",
) -> LineInfo:
    """Make `adapter` the line's active adapter (served from the next request on).

    The adapter must be trained on the line's base model. A rollback (action "rollback")
    only goes back to an adapter the line has served before."""
    with audited(engine, actor, f"learning.line.{action}", target=line_name) as ctx:
        require(actor, "adapters:activate")
        with writing(engine) as s:
            line = _line(s, line_name)
            new = _adapter(s, adapter)
            if new.base_model_fingerprint != line.base_model_fingerprint:
                raise LineError(
                    f"adapter {new.name!r} was trained on another base model "
                    f"({new.base_model}) than line {line.name!r} ({line.base_model})"
                )
            if action == "rollback":
                served = set(
                    s.scalars(
                        select(LineActivation.adapter_id).where(LineActivation.line_id == line.id)
                    )
                )
                if new.id not in served:
                    raise LineError(
                        f"adapter {new.name!r} was never active in line {line.name!r}: a "
                        "rollback goes back to one that was (`clara learn line show "
                        f"{line.name}` lists them)"
                    )
            previous = s.get(Adapter, line.active_adapter_id)
            if previous is not None and previous.id == new.id:
                raise Conflict(f"adapter {new.name!r} is already active in line {line.name!r}")
            line.active_adapter_id = new.id
            s.add(
                LineActivation(
                    line_id=line.id,
                    action=action,
                    adapter_id=new.id,
                    adapter_name=new.name,
                    previous_adapter_id=previous.id if previous else None,
                    previous_adapter_name=previous.name if previous else None,
                    actor=actor.username,
                    reason=reason,
                )
            )
            ctx.detail.update(
                adapter=new.name, previous=previous.name if previous else None, reason=reason
            )
            return _info(s, line, history=True)


def rollback(
    engine: Engine, actor: Principal, line_name: str, adapter: str | int, reason: str = ""
) -> LineInfo:
    return activate(
        engine, actor, line_name, adapter, reason=reason or "rollback", action="rollback"
    )


def delete_line(engine: Engine, actor: Principal, name: str) -> None:
    """Forget the line and its history; its adapters stay registered."""
    with audited(engine, actor, "learning.line.delete", target=name):
        require(actor, "adapters:activate")
        with writing(engine) as s:
            s.delete(_line(s, name))


def served_adapter(engine: Engine, name: str) -> str:
    """The adapter name to serve for `name`: the active adapter of "line:NAME", else `name`.
    Read per request (no cache), so an activation reaches the next answer."""
    if not name.startswith(LINE_PREFIX):
        return name
    with reading(engine) as s:
        line = _line(s, name[len(LINE_PREFIX) :])
        active = s.get(Adapter, line.active_adapter_id)
        if active is None:  # cannot happen with the foreign key; say so if it does
            raise LineError(f"line {line.name!r} has no active adapter")
        return active.name


def lines_serving(engine: Engine, adapter_id: int) -> list[str]:
    """The lines whose active adapter this is (it must not be deleted)."""
    with reading(engine) as s:
        return list(
            s.scalars(select(AdapterLine.name).where(AdapterLine.active_adapter_id == adapter_id))
        )
