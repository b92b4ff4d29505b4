"""/api/v1/learning: adapter lines (served as "line:NAME"), their history, activation and
rollback, learning policies and cycles.

Every answer comes from core.learning (permissions and audit are there); a policy is sent as
the JSON object `clara learn policy set` reads as YAML.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.security import User
from core.learning.cycles import (
    CycleInfo,
    get_policy,
    list_cycles,
    new_samples,
    set_policy,
    start_cycle,
)
from core.learning.lines import (
    LineInfo,
    activate,
    create_line,
    delete_line,
    get_line,
    list_lines,
    rollback,
)

router = APIRouter(prefix="/learning", tags=["learning"])


class LineCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a-z, 0-9, '_' and '-'; served as line:NAME")
    adapter: str = Field(description="its first (active) adapter: name or id")
    description: str = ""


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str
    reason: str = ""


def _engine(request: Request):
    return request.app.state.engine


@router.get("/lines")
def lines(user: User, request: Request) -> dict[str, Any]:
    """Every line with its active adapter."""
    return {"lines": [x.model_dump(mode="json") for x in list_lines(_engine(request), user)]}


@router.post("/lines", status_code=201, response_model=LineInfo)
def create(user: User, request: Request, body: LineCreate) -> LineInfo:
    """A new line (409 when the name is taken)."""
    return create_line(_engine(request), user, body.name, body.adapter, body.description)


@router.get("/lines/{name}")
def line(name: str, user: User, request: Request) -> dict[str, Any]:
    """The line with its history (newest first), its policy and its new sample count."""
    engine = _engine(request)
    info = get_line(engine, user, name)
    policy = get_policy(engine, user, name)
    return {
        "line": info.model_dump(mode="json"),
        "served_as": info.served_as,
        "policy": policy.model_dump(mode="json") if policy else None,
        "new_samples": new_samples(engine, user, name),
    }


@router.post("/lines/{name}/activate", response_model=LineInfo)
def activate_(name: str, user: User, request: Request, body: Change) -> LineInfo:
    """Serve another adapter of the line's base as the line, from the next request on."""
    return activate(_engine(request), user, name, body.adapter, reason=body.reason)


@router.post("/lines/{name}/rollback", response_model=LineInfo)
def rollback_(name: str, user: User, request: Request, body: Change) -> LineInfo:
    """Go back to an adapter the line has served before."""
    return rollback(_engine(request), user, name, body.adapter, body.reason)


@router.delete("/lines/{name}", status_code=204)
def delete(name: str, user: User, request: Request) -> None:
    """Forget the line and its history (its adapters stay registered)."""
    delete_line(_engine(request), user, name)


@router.put("/lines/{name}/policy")
def policy(name: str, user: User, request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Set the line's learning policy (422 naming the field, with the closest key for a
    misspelt one)."""
    return set_policy(_engine(request), user, name, body).model_dump(mode="json")


@router.get("/lines/{name}/cycles")
def cycles(name: str, user: User, request: Request) -> dict[str, Any]:
    """The line's cycles, newest first, with the gate's figures and probe answers."""
    return {
        "cycles": [c.model_dump(mode="json") for c in list_cycles(_engine(request), user, name)]
    }


@router.post("/lines/{name}/cycles", status_code=201, response_model=CycleInfo)
def run(name: str, user: User, request: Request) -> CycleInfo:
    """Start a cycle now (409 while one is under way); a worker trains and gates it."""
    return start_cycle(_engine(request), user, name)
