"""/api/v1/corpus."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/corpus", tags=["corpus"])
