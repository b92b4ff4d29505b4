"""/api/v1/datasets: datasets, import, build from documents, scoring (a queued job), the
review queue with optimistic versions, frozen versions, diff, export and its download.

Each route acts as the caller; core checks the permission (datasets:read, :create,
:review, :export; building also corpus:search) and writes the audit rows. `{ref}` is a
dataset's name or id; `{version}` is `v2`, `2` or `latest` within it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from api.errors import error_response
from api.security import User
from api.shapes import MAX_PAGE, invalid, page
from core.datasets.builder import (
    DEFAULT_MAX_TOKENS,
    build_from_documents,
    build_from_saved_search,
)
from core.datasets.errors import ImportFailed
from core.datasets.export import EXPORT_FORMATS, FILE_TYPES, export_file, export_version
from core.datasets.importers import FORMATS, import_upload
from core.datasets.models import DATASET_KINDS
from core.datasets.review import (
    SORTS,
    ReviewStats,
    SampleFilter,
    SamplePage,
    SampleView,
    bulk_decide,
    decide,
    edit_sample,
    get_sample,
    list_samples,
    review_stats,
)
from core.datasets.scoring import latest_scoring_run, start_scoring
from core.datasets.service import (
    DatasetInfo,
    Message,
    create_dataset,
    delete_dataset,
    get_dataset,
    list_datasets,
)
from core.datasets.versions import (
    VersionInfo,
    diff_versions,
    freeze,
    get_version,
    list_versions,
)

router = APIRouter(prefix="/datasets", tags=["datasets"])

Decision = Literal["accepted", "rejected", "pending"]
Status = Literal["pending", "accepted", "rejected"]
VersionRef = Annotated[str, Path(pattern=r"^(latest|[vV]?\d{1,9})$", description="v2, 2 or latest")]
# The most bad rows an import answer lists one by one (the message counts them all).
MAX_ROW_ERRORS = 1000
# Media types of the files an export holds.
MEDIA_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".yaml": "application/yaml",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str = Field(default="", max_length=5000)
    kind: Literal[DATASET_KINDS] = "standard"  # type: ignore[valid-type]
    thresholds: dict[str, Any] | None = None


class BuildBody(Strict):
    """Samples from corpus documents: the given ids, or what a saved search finds now."""

    doc_ids: list[str] = Field(default_factory=list, max_length=10_000)
    saved_search: str | None = Field(default=None, min_length=1, max_length=128)
    template: str | dict[str, Any] = Field(
        default="text", description="a built-in template's name or a template object"
    )
    unit: Literal["document", "chunk"] = "document"
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=16, le=100_000)
    k: int | None = Field(default=None, ge=1, le=1000, description="saved search: top k")


class ReviewBody(Strict):
    decision: Decision
    row_version: int = Field(ge=1, description="the sample's row_version when you read it")
    note: str = Field(default="", max_length=5000)


class EditBody(Strict):
    row_version: int = Field(ge=1, description="the sample's row_version when you read it")
    text: str | None = None
    messages: list[Message] | None = None
    system: str | None = None
    decision: Decision | None = None


class Filters(SampleFilter):
    model_config = ConfigDict(extra="forbid")

    status: list[Status] | None = None


class BulkReviewBody(Strict):
    decision: Decision
    filters: Filters = Field(default_factory=lambda: Filters(status=["pending"]))


class FreezeBody(Strict):
    eval_ratio: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 42
    name: str | None = Field(default=None, max_length=200)


class ExportBody(Strict):
    format: Literal[EXPORT_FORMATS] = "messages"  # type: ignore[valid-type]
    file_type: Literal[FILE_TYPES] = "jsonl"  # type: ignore[valid-type]


def _engine(request: Request):
    return request.app.state.engine


def _version(v: VersionInfo) -> dict[str, Any]:
    return {"ref": v.ref, **v.model_dump(mode="json")}


# Datasets ---------------------------------------------------------------------------------


@router.get("")
def datasets(
    user: User,
    request: Request,
    kind: Literal[DATASET_KINDS] | None = None,  # type: ignore[valid-type]
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """Datasets by name with counts by status, mean quality score and versions."""
    rows = list_datasets(_engine(request), user, kind)
    items = [d.model_dump(mode="json") for d in rows[offset : offset + limit]]
    return page(items, len(rows), offset, limit)


@router.post("", status_code=201, response_model=DatasetInfo)
def create(user: User, request: Request, body: DatasetCreate) -> DatasetInfo:
    """Create an empty dataset (409 when the name is taken)."""
    return create_dataset(
        _engine(request), user, body.name, body.description, body.kind, body.thresholds
    )


@router.get("/{ref}")
def dataset(user: User, request: Request, ref: str) -> dict[str, Any]:
    """A dataset: counts, thresholds and its latest scoring run."""
    engine = _engine(request)
    info = get_dataset(engine, user, ref)
    run = latest_scoring_run(engine, user, info.id)
    return {
        **info.model_dump(mode="json"),
        "latest_scoring_run": run.model_dump(mode="json") if run else None,
    }


@router.delete("/{ref}", status_code=204)
def remove_dataset(user: User, request: Request, ref: str) -> Response:
    """Delete a dataset and its samples (409 while frozen versions reference it)."""
    delete_dataset(_engine(request), user, ref)
    return Response(status_code=204)


# Adding samples ---------------------------------------------------------------------------


@router.post("/{ref}/import")
def import_samples(
    user: User,
    request: Request,
    ref: str,
    file: Annotated[UploadFile, File(description="JSONL, JSON, CSV or Parquet")],
    fmt: Annotated[
        Literal[tuple(FORMATS)] | None,  # type: ignore[valid-type]
        Form(alias="format", description="detected from the rows when not given"),
    ] = None,
    skip_bad: Annotated[bool, Form(description="import the good rows, report the bad")] = False,
) -> Any:
    """Import instruction data (messages, alpaca, sharegpt or text) into the dataset, all or
    nothing: with a bad row nothing is imported and the answer is 422 naming every bad row
    (file, line, field, problem), unless skip_bad."""
    data = file.file.read()
    try:
        report = import_upload(
            _engine(request), user, ref, file.filename or "upload", data, fmt, skip_bad
        )
    except ImportFailed as err:
        rows = [
            {"field": e.field, "file": e.file, "line": e.line, "problem": e.reason}
            for e in err.errors[:MAX_ROW_ERRORS]
        ]
        return error_response(request, 422, str(err), kind="ImportFailed", fields=rows)
    out = asdict(report)
    out["errors_left_out"] = max(0, len(report.errors) - MAX_ROW_ERRORS)
    out["errors"] = out["errors"][:MAX_ROW_ERRORS]
    return out


@router.post("/{ref}/build")
def build(user: User, request: Request, ref: str, body: BuildBody) -> dict[str, Any]:
    """Add samples built from corpus documents through a template; identical samples
    already in the dataset are skipped, unknown document ids listed in `missing`."""
    if bool(body.doc_ids) == bool(body.saved_search):
        raise invalid("body", "doc_ids", "give either doc_ids or saved_search")
    engine = _engine(request)
    if body.doc_ids:
        report = build_from_documents(
            engine, user, ref, body.doc_ids, body.template, body.unit, body.max_tokens
        )
    else:
        report = build_from_saved_search(
            engine, user, ref, body.saved_search, body.template, body.unit, body.max_tokens, body.k
        )
    return asdict(report)


# Scoring ----------------------------------------------------------------------------------


@router.post("/{ref}/score", status_code=202)
def score(user: User, request: Request, ref: str) -> dict[str, Any]:
    """Queue a quality-scoring run as a "score" job for the worker; answers at once with the
    job id (follow it under /api/v1/jobs) and the run (409 while one is running)."""
    run = start_scoring(_engine(request), user, ref)
    return {"job_id": run.job_id, "run_id": run.id, "run": run.model_dump(mode="json")}


# Review -----------------------------------------------------------------------------------


@router.get("/{ref}/samples", response_model=SamplePage)
def samples(
    user: User,
    request: Request,
    ref: str,
    status: Annotated[list[Status], Query()] = [],  # noqa: B006 - FastAPI copies it
    reason: Annotated[str | None, Query(max_length=100)] = None,
    source: Annotated[str | None, Query(max_length=32)] = None,
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    unscored: bool | None = None,
    edited: bool | None = None,
    search: Annotated[str | None, Query(max_length=500)] = None,
    sort: Literal[tuple(SORTS)] = "score_asc",  # type: ignore[valid-type]
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
) -> SamplePage:
    """A page of the review queue, filtered and sorted; each sample has its `row_version`
    (send it with a decision or edit)."""
    filters = SampleFilter(
        status=list(status) or None,
        reason=reason,
        source=source,
        min_score=min_score,
        max_score=max_score,
        unscored=unscored,
        edited=edited,
        search=search,
    )
    return list_samples(_engine(request), user, ref, filters, sort, offset, limit)


@router.get("/{ref}/samples/{sample_id}", response_model=SampleView)
def sample(user: User, request: Request, ref: str, sample_id: int) -> SampleView:
    return get_sample(_engine(request), user, sample_id, dataset_ref=ref)


@router.post("/{ref}/samples/{sample_id}/review", response_model=SampleView)
def review(user: User, request: Request, ref: str, sample_id: int, body: ReviewBody) -> SampleView:
    """Accept, reject or reset a sample as seen at `row_version`; 409 naming who changed
    it when someone else did since."""
    return decide(
        _engine(request), user, sample_id, body.decision, body.row_version, body.note, ref
    )


@router.put("/{ref}/samples/{sample_id}", response_model=SampleView)
def edit(user: User, request: Request, ref: str, sample_id: int, body: EditBody) -> SampleView:
    """Replace a sample's content (text, or messages and system) as seen at `row_version`;
    the original is kept, the quality score cleared; 409 when someone changed it since."""
    messages = [m.model_dump() for m in body.messages] if body.messages is not None else None
    return edit_sample(
        _engine(request),
        user,
        sample_id,
        body.row_version,
        text=body.text,
        messages=messages,
        system=body.system,
        decision=body.decision,
        dataset_ref=ref,
    )


@router.post("/{ref}/review")
def review_all(user: User, request: Request, ref: str, body: BulkReviewBody) -> dict[str, Any]:
    """One decision for every sample matching the filters (default: the pending ones)."""
    changed = bulk_decide(_engine(request), user, ref, body.decision, body.filters)
    return {"changed": changed, "decision": body.decision}


@router.get("/{ref}/review-stats", response_model=ReviewStats)
def review_statistics(user: User, request: Request, ref: str) -> ReviewStats:
    """Review progress, reasons and the score and length distributions."""
    return review_stats(_engine(request), user, ref)


# Versions ---------------------------------------------------------------------------------


@router.get("/{ref}/versions")
def versions(
    user: User,
    request: Request,
    ref: str,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """The frozen versions, newest first."""
    rows = list_versions(_engine(request), user, ref)
    return page([_version(v) for v in rows[offset : offset + limit]], len(rows), offset, limit)


@router.post("/{ref}/versions", status_code=201)
def freeze_version(user: User, request: Request, ref: str, body: FreezeBody) -> dict[str, Any]:
    """Freeze the accepted samples into the next immutable version (seeded train/eval split
    as Parquet with a manifest)."""
    v = freeze(_engine(request), user, ref, body.eval_ratio, body.seed, body.name)
    return _version(v)


@router.get("/{ref}/versions/{version}")
def version(user: User, request: Request, ref: str, version: VersionRef) -> dict[str, Any]:
    return _version(get_version(_engine(request), user, f"{ref}@{version}"))


@router.get("/{ref}/diff")
def diff(
    user: User,
    request: Request,
    ref: str,
    old: Annotated[str, Query(pattern=r"^(latest|[vV]?\d{1,9})$")],
    new: Annotated[str, Query(pattern=r"^(latest|[vV]?\d{1,9})$")],
    limit: Annotated[int, Query(ge=0, le=100_000)] = 1000,
) -> dict[str, Any]:
    """Samples added, removed and changed between two versions (ids, at most `limit` of
    each; `counts` has them all)."""
    d = diff_versions(_engine(request), user, f"{ref}@{old}", f"{ref}@{new}")
    return {
        "old": d.old,
        "new": d.new,
        "counts": {
            "added": len(d.added),
            "removed": len(d.removed),
            "changed": len(d.changed),
            "unchanged": d.unchanged,
        },
        "added": d.added[:limit],
        "removed": d.removed[:limit],
        "changed": d.changed[:limit],
    }


# Export -----------------------------------------------------------------------------------


@router.post("/{ref}/versions/{version}/exports", status_code=201)
def export(
    user: User, request: Request, ref: str, version: VersionRef, body: ExportBody
) -> dict[str, Any]:
    """Export a version in a training format (messages, alpaca, sharegpt, text) as JSONL,
    Parquet or CSV, with LLaMA-Factory and Axolotl snippets; answers the files with their
    rows, sha256 and download path."""
    exp = export_version(_engine(request), user, f"{ref}@{version}", body.format, body.file_type)
    name, _, number = exp.version.partition("@")

    def url(file: str) -> str:
        return request.url_for(
            "export_download",
            ref=name,
            version=number,
            fmt=exp.format,
            file_type=exp.file_type,
            name=file,
        ).path

    return {
        "version": exp.version,
        "version_id": exp.version_id,
        "format": exp.format,
        "file_type": exp.file_type,
        "files": {f: {**meta, "url": url(f)} for f, meta in exp.files.items()},
        "dataset_info": url(exp.dataset_info_path.name),
        "axolotl": url(exp.axolotl_path.name),
    }


@router.get("/{ref}/versions/{version}/exports/{fmt}/{file_type}/{name}", name="export_download")
def export_download(
    user: User,
    request: Request,
    ref: str,
    version: VersionRef,
    fmt: str,
    file_type: str,
    name: str,
) -> FileResponse:
    """A file of an export made before (streamed): train/eval data, dataset_info.json or
    axolotl.yaml."""
    path = export_file(_engine(request), user, f"{ref}@{version}", fmt, file_type, name)
    download = f"{path.parent.parent.name}-{path.parent.name}-{path.name}"  # faq-v1-...
    return FileResponse(
        path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"), filename=download
    )
