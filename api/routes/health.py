"""/api/v1/health: for probes, no credentials, nothing about the installation's inside."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.system import liveness

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> JSONResponse:
    state = liveness(request.app.state.engine)
    return JSONResponse(state, status_code=200 if state["status"] != "error" else 503)
