"""/api/v1/adapters."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/adapters", tags=["adapters"])
