"""Errors of the datasets area; each message says what is wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.errors import ClaraError, Conflict, NotFound


class DatasetError(ClaraError):
    """Invalid dataset operation (bad name, nothing to freeze, ...)."""


class DatasetNotFound(DatasetError, NotFound):
    def __init__(self, ref: object) -> None:
        self.ref = ref
        super().__init__(f"no dataset {ref!r}; `clara dataset list` shows the existing ones")


class DatasetConflict(DatasetError, Conflict):
    """The dataset's state does not allow this now: the name is taken, it is being scored,
    frozen versions reference it (the HTTP API answers 409)."""


class SampleNotFound(DatasetError, NotFound):
    def __init__(self, sample_id: int) -> None:
        self.sample_id = sample_id
        super().__init__(f"no sample with id {sample_id}")


class VersionNotFound(DatasetError, NotFound):
    def __init__(self, ref: object) -> None:
        self.ref = ref
        super().__init__(
            f"no dataset version {ref!r}; refer to one as <dataset>@v<N>, <dataset>@latest "
            "or its numeric id (`clara dataset show <dataset>` lists the versions)"
        )


class ScoringRunNotFound(DatasetError, NotFound):
    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        super().__init__(f"no scoring run {run_id}")


class ExportNotFound(DatasetError, NotFound):
    """The export (or a file of it) was not made, or not with this format and file type."""


class InvalidSample(DatasetError, ValueError):
    """A sample's new content is not a valid sample (empty text, a conversation without an
    answer, ...)."""


class TemplateError(DatasetError):
    """A sample template names an unknown placeholder or is malformed."""


class ExportError(DatasetError):
    """A version cannot be exported in the requested format."""


class ReviewConflict(DatasetError, Conflict):
    """Someone else changed the sample since it was loaded (optimistic concurrency)."""

    def __init__(
        self, sample_id: int, changed_by: str, changed_at: datetime | None, status: str
    ) -> None:
        self.sample_id, self.changed_by, self.changed_at, self.status = (
            sample_id,
            changed_by,
            changed_at,
            status,
        )
        when = changed_at.strftime("%Y-%m-%d %H:%M:%S UTC") if changed_at else "just now"
        super().__init__(
            f"sample {sample_id} was changed by {changed_by} at {when} (now {status}) after you "
            "opened it; reload it and decide again"
        )


@dataclass(frozen=True)
class ImportRowError:
    file: str
    line: int
    reason: str
    field: str = ""  # the record's field it is about, as a path (messages.1.role); "" = the row

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class ImportFailed(DatasetError, ValueError):
    """Bad rows were found; nothing was imported (all-or-nothing unless skip_bad). A
    ValueError too: the input is wrong (the HTTP API answers 422, naming every row)."""

    MAX_SHOWN = 20

    def __init__(self, errors: list[ImportRowError], good_rows: int) -> None:
        self.errors = errors
        self.good_rows = good_rows
        shown = "\n".join(f"  {e}" for e in errors[: self.MAX_SHOWN])
        more = len(errors) - self.MAX_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(errors)} bad row(s), {good_rows} good; nothing was imported. "
            f"Fix the rows or import with skip_bad (CLI: --skip-bad) to keep the good ones:\n"
            f"{shown}{tail}"
        )


class UnknownFormat(DatasetError, ValueError):
    """The rows match none of the supported instruction-data formats."""
