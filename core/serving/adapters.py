"""The adapter registry as the chat sees it: what the engine can load, what the page lists,
and an adapter's lineage."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine

from core.permissions import SYSTEM, Principal, require
from core.serving.engine import AdapterRef


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


def chat_adapters(db: Engine, actor: Principal) -> list[Any]:
    """The registered adapters (training's AdapterInfo), newest first, for the side panel."""
    from core.training.adapters import list_adapters

    require(actor, "chat:use")
    return sorted(list_adapters(db, SYSTEM), key=lambda a: a.created_at, reverse=True)


def adapter_lineage(db: Engine, actor: Principal, name: str) -> dict[str, Any]:
    """The registry's lineage of one adapter (dataset version, job, base), for the page."""
    from core.training.adapters import lineage

    require(actor, "adapters:read")
    result = lineage(db, actor, name)
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if hasattr(result, "__dataclass_fields__"):
        return asdict(result)
    return dict(result)
