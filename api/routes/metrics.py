"""/metrics: Prometheus exposition of this server and the database (core.ops.metrics).

Answers the scrape token (CLARA_METRICS_TOKEN) or a caller holding system:monitor; anyone
else gets 401 (no or unknown credentials) or 403, so the API can listen beyond loopback
without showing its job counts, host names and latencies to the network.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.security import current_caller
from core.ops.metrics import exposition, is_scrape_token
from core.permissions import require

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    state = request.app.state
    if not is_scrape_token(state.settings, request.headers.get("authorization")):
        require(current_caller(request).principal, "system:monitor")
    body, content_type = exposition(state.metrics)
    return Response(body, media_type=content_type)
