"""Roles, permissions and the acting user. `require(user, permission)` is the one
enforcement point: every core operation takes the acting `Principal` and calls it itself, so
the CLI, the pages, the chat server and any later API cannot drift apart in what they allow.

A leaf module: it imports nothing of ours, so every area (the audit log included) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import ClaraError

RoleName = Literal["admin", "trainer", "analyst", "user", "auditor"]
ROLES: tuple[str, ...] = ("admin", "trainer", "analyst", "user", "auditor")

PERMISSIONS: dict[str, str] = {
    "corpus:ingest": "Add, change and delete documents",
    "corpus:ingest_server_path": "Ingest from a folder on the server",
    "corpus:search": "Search and read documents",
    "datasets:read": "See datasets, samples and versions",
    "datasets:create": "Create datasets, import and build samples, freeze versions",
    "datasets:review": "Accept, reject and edit samples",
    "datasets:export": "Export dataset versions",
    "training:create": "Submit training jobs",
    "training:read": "See jobs, metrics and logs",
    "training:cancel": "Cancel and retry jobs",
    "adapters:read": "See adapters and their lineage",
    "adapters:activate": "Activate, merge and delete adapters",
    "chat:use": "Chat with the base model and adapters, give feedback",
    "audit:read": "Read the audit log",
    "users:manage": "Add users, change roles, disable, reset passwords",
    "system:read": "See system status and configuration",
    "system:monitor": "Read the servers' monitoring (chat request statistics, /metrics)",
    "system:maintain": "Clean up the data dir; move the stores to PostgreSQL and a Chroma server",
    "system:backup": "Back up the workbench and restore a backup (a backup holds every secret)",
    "system:health": "See the health of every process, store, queue and disk (Operations)",
}

_READ_ALL = {
    "corpus:search",
    "datasets:read",
    "training:read",
    "adapters:read",
    "system:read",
}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "trainer": frozenset(
        _READ_ALL
        | {
            "corpus:ingest",
            "datasets:create",
            "datasets:review",
            "datasets:export",
            "training:create",
            "training:cancel",
            "adapters:activate",
            "chat:use",
        }
    ),
    "analyst": frozenset(
        _READ_ALL
        | {"corpus:ingest", "datasets:create", "datasets:review", "datasets:export", "chat:use"}
    ),
    "user": frozenset({"chat:use", "adapters:read", "system:read"}),
    "auditor": frozenset(_READ_ALL | {"audit:read", "system:health"}),
}


class AuthError(ClaraError):
    """Base class of authentication and authorisation errors."""


class PermissionDenied(AuthError):
    def __init__(self, username: str, role: str, permission: str) -> None:
        self.username, self.role, self.permission = username, role, permission
        super().__init__(
            f"{username} ({role}) may not do this: it needs the permission '{permission}'"
        )


@dataclass(frozen=True)
class Principal:
    """The acting user as core sees it."""

    username: str
    role: str
    user_id: int | None = None
    full_name: str = ""

    def can(self, permission: str) -> bool:
        return has_permission(self.role, permission)


# The worker, migrations and first-start bootstrap act as this principal.
SYSTEM = Principal(username="system", role="admin")


def has_permission(role: str, permission: str) -> bool:
    if permission not in PERMISSIONS:
        raise KeyError(f"unknown permission {permission!r}")
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def require(user: Principal | None, permission: str) -> Principal:
    """Raise PermissionDenied unless `user` holds `permission`; returns the user."""
    if user is None:
        raise PermissionDenied("anonymous", "none", permission)
    if not has_permission(user.role, permission):
        raise PermissionDenied(user.username, user.role, permission)
    return user


def permissions_of(role: str) -> list[str]:
    return sorted(ROLE_PERMISSIONS.get(role, frozenset()))
