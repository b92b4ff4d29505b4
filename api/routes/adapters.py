"""/api/v1/adapters: the adapter registry: list, show with lineage, merge, delete.

Every answer comes from core.training.adapters (permissions and audit are there).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.security import User
from core.training.adapters import (
    AdapterInfo,
    delete_adapter,
    get_adapter,
    lineage,
    list_adapters,
    merge_adapter,
)

router = APIRouter(prefix="/adapters", tags=["adapters"])


@router.get("")
def list_(user: User, request: Request) -> dict[str, Any]:
    """Registered adapters, newest first."""
    adapters = list_adapters(request.app.state.engine, user)
    return {"adapters": [a.model_dump(mode="json") for a in adapters]}


@router.get("/{name}")
def show(name: str, user: User, request: Request) -> dict[str, Any]:
    """One adapter (by name or id) with its lineage: dataset version → job → adapter, back
    through the adapters it continued."""
    engine = request.app.state.engine
    info = get_adapter(engine, user, name)
    return {"adapter": info.model_dump(mode="json"), "lineage": lineage(engine, user, info.id)}


@router.post("/{name}/merge")
def merge(name: str, user: User, request: Request) -> dict[str, Any]:
    """Merge the adapter into its base model: full safetensors weights with the tokenizer,
    written on the server under data_dir/merged/<adapter> (an earlier merge there is
    replaced). Takes as long as loading the base model; answers when the files are there."""
    state = request.app.state
    out = merge_adapter(state.engine, user, name, settings=state.settings)
    return {"adapter": out.name, "path": str(out)}


@router.delete("/{name}", response_model=AdapterInfo)
def delete(name: str, user: User, request: Request) -> AdapterInfo:
    """Delete the adapter's row, then its files; answers with what was deleted."""
    return delete_adapter(request.app.state.engine, user, name)
