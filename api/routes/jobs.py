"""/api/v1/jobs: submit a training spec (YAML or JSON), list, show, cancel, retry, logs, and
a job's metrics and state live as Server-Sent Events.

Every answer comes from core.training (permissions and audit are there); the routes only
translate HTTP to those calls and back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from api.errors import error_response
from api.security import User, still_allowed
from api.streams import pulled, sse_event, sse_response
from core.training.events import job_events
from core.training.jobs import (
    JobInfo,
    JobSummary,
    SubmitRefused,
    cancel_job,
    job_log,
    job_summary,
    list_jobs,
    retry_job,
    submit_job,
)
from core.training.models import JOB_KINDS, JOB_STATES
from core.training.spec import SpecError, SpecText

router = APIRouter(prefix="/jobs", tags=["jobs"])

# Content types of a spec in the request body, and the parser each one gets.
SPEC_TYPES = {
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
    "application/json": "json",
}
# How often a live stream looks at the database, and when it says it is still there.
EVENT_POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
# How often a quiet stream asks whether its caller would still be let in (a revoked key or a
# disabled user must not keep watching).
RECHECK_SECONDS = 5.0

State = Literal[JOB_STATES]  # type: ignore[valid-type]
Kind = Literal[JOB_KINDS]  # type: ignore[valid-type]


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _spec_fields(err: SpecError | SubmitRefused) -> list[dict[str, Any]]:
    if isinstance(err, SubmitRefused):
        return [{"field": err.field, "problem": str(err).split(": ", 1)[-1]}]
    out = []
    for e in err.errors:
        entry = {"field": e.get("field") or "spec", "problem": e["message"]}
        out.append(entry | {k: e[k] for k in ("line", "suggestion") if e.get(k) is not None})
    return out


_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "description": "a training spec (as `clara train submit` takes it), YAML or JSON",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=JobInfo,
    openapi_extra=_SPEC_BODY,
    responses={415: {"description": "not YAML or JSON"}, 422: {"description": "spec refused"}},
)
def submit(
    user: User, request: Request, body: Annotated[bytes, Depends(_raw_body)]
) -> JSONResponse:
    """Queue a training job. A refused spec answers 422 with `fields`: each field, the
    problem, its line and, for a misspelt key, the `suggestion`."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = SPEC_TYPES.get(media)
    if fmt is None:
        return error_response(
            request,
            415,
            f"send the spec as YAML (application/yaml) or JSON (application/json), "
            f"not {media or 'without a Content-Type'}",
            kind="UnsupportedMediaType",
        )
    state = request.app.state
    try:
        job = submit_job(
            state.engine, user, SpecText(body, fmt, source="spec"), settings=state.settings
        )
    except (SpecError, SubmitRefused) as err:
        return error_response(
            request, 422, str(err), kind=type(err).__name__, fields=_spec_fields(err)
        )
    return JSONResponse(
        job.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"{request.url.path.rstrip('/')}/{job.id}"},
    )


@router.get("")
def list_(
    user: User,
    request: Request,
    state: Annotated[list[State] | None, Query(description="repeat for several")] = None,
    kind: Kind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Jobs newest first, optionally of some states and one kind."""
    jobs = list_jobs(
        request.app.state.engine, user, state or None, limit=limit, offset=offset, kind=kind
    )
    return {
        "jobs": [j.model_dump(mode="json") for j in jobs],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if len(jobs) == limit else None,
    }


@router.get("/{job_id}", response_model=JobSummary)
def show(job_id: int, user: User, request: Request) -> JobSummary:
    """State, spec, progress and ETA, a summary of the metrics, the adapter it produced."""
    return job_summary(request.app.state.engine, user, job_id)


@router.post("/{job_id}/cancel", response_model=JobInfo)
def cancel(job_id: int, user: User, request: Request) -> JobInfo:
    """A queued job is cancelled at once; a running one is stopped by its worker after a
    checkpoint (`cancel_requested` until then)."""
    return cancel_job(request.app.state.engine, user, job_id)


@router.post("/{job_id}/retry", response_model=JobInfo)
def retry(job_id: int, user: User, request: Request) -> JobInfo:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    return retry_job(request.app.state.engine, user, job_id)


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def logs(
    job_id: int,
    user: User,
    request: Request,
    tail: Annotated[int, Query(ge=0, le=10_000, description="last lines")] = 50,
    offset: Annotated[int | None, Query(ge=0, description="bytes from here on")] = None,
) -> PlainTextResponse:
    """The log as text: the last `tail` lines, or with `offset` the bytes from there on (at
    most 1 MB). `X-Log-Next-Offset` is where to read on; `X-Log-Size` the file's size."""
    chunk = job_log(request.app.state.engine, user, job_id, offset=offset, tail=tail)
    headers = {"X-Log-Next-Offset": str(chunk.next_offset), "X-Log-Size": str(chunk.size)}
    if chunk.offset is not None:
        headers["X-Log-Offset"] = str(chunk.offset)
    return PlainTextResponse(chunk.text, headers=headers)


@router.get("/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
def events(
    job_id: int,
    user: User,
    request: Request,
    since_metric: Annotated[int, Query(ge=0, description="metric rows after this id")] = 0,
):
    """Server-Sent Events: `metric` (each metric row, history first), `state` (the job
    whenever it changes), then `end` with the final state, and the stream closes."""
    items = job_events(request.app.state.engine, user, job_id, since_metric_id=since_metric)

    async def stream() -> AsyncIterator[str]:
        quiet, checked = 0.0, time.monotonic()
        async for item in pulled(items):
            if time.monotonic() - checked >= RECHECK_SECONDS:
                checked = time.monotonic()
                if not await anyio.to_thread.run_sync(still_allowed, request, "training:read"):
                    yield sse_event({"detail": "credentials no longer valid"}, "error")
                    return
            if item is None:  # nothing new: wait here, holding no thread
                await anyio.sleep(EVENT_POLL_SECONDS)
                quiet += EVENT_POLL_SECONDS
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                continue
            quiet = 0.0
            yield sse_event(item.data, item.event)

    return sse_response(stream())
