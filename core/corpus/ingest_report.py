"""What an ingest reports: progress while it runs, per file and per document what
happened, and the outcome its audit row records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# progress(stage, done, total, detail): stages "files" and "embedding".
Progress = Callable[[str, int, int | None, str], None]


@dataclass
class DocumentOutcome:
    doc_id: str
    action: str  # added | updated | unchanged | refused (an id of another file's document)
    revision: int
    line: int | None = None
    problem: str = ""


@dataclass
class FileReport:
    path: str
    status: str = "ok"  # ok | partial | failed
    documents: list[DocumentOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"added": 0, "updated": 0, "unchanged": 0}
    )


@dataclass
class LinkReport:
    """What became of the links the ingested documents declare: resolved to a document, or
    kept unresolved (the first ones named, with why) until their target arrives; and links
    of earlier ingests that the documents of this one resolved."""

    resolved: int = 0
    unresolved: int = 0
    resolved_earlier: int = 0
    unresolved_total: int = 0  # waiting in the whole corpus, this ingest's included
    first_unresolved: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    embedded: int = 0
    pending_embeddings: int = 0
    seconds: float = 0.0
    links: LinkReport = field(default_factory=LinkReport)
    embed_job_id: int | None = None  # the queued embed job, when embedding was left to one

    def _sum(self, key: str) -> int:
        return sum(f.counts[key] for f in self.files)

    @property
    def added(self) -> int:
        return self._sum("added")

    @property
    def updated(self) -> int:
        return self._sum("updated")

    @property
    def unchanged(self) -> int:
        return self._sum("unchanged")

    @property
    def failed_files(self) -> list[FileReport]:
        return [f for f in self.files if f.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failed_files

    def problems(self) -> list[str]:
        return [f"{f.path}: {p}" for f in self.files for p in f.problems]

    def warnings(self) -> list[str]:
        return [f"{f.path}: {w}" for f in self.files for w in f.warnings]

    def summary(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed_files": len([f for f in self.files if f.status == "failed"]),
            "partial_files": len([f for f in self.files if f.status == "partial"]),
            "embedded": self.embedded,
            "pending_embeddings": self.pending_embeddings,
            "embed_job_id": self.embed_job_id,
            "links_resolved": self.links.resolved,
            "links_unresolved": self.links.unresolved,
            "links_resolved_earlier": self.links.resolved_earlier,
            "seconds": round(self.seconds, 2),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "links": self.links.to_dict(),
            "files": [
                {
                    "path": f.path,
                    "status": f.status,
                    "counts": f.counts,
                    "problems": f.problems,
                    "warnings": f.warnings,
                    "documents": [d.__dict__ for d in f.documents],
                }
                for f in self.files
            ],
        }


# How many failed files the audit row names one by one.
AUDIT_MAX_FILES = 50


def ingest_outcome(report: IngestReport) -> str:
    """The audit outcome of an ingest: ok, partial (some file failed or lost rows) or
    failed (every file failed)."""
    if report.ok:
        return "ok"
    if report.files and all(f.status == "failed" for f in report.files):
        return "failed"
    return "partial"


def ingest_audit_detail(report: IngestReport) -> dict[str, Any]:
    """The summary plus every file that did not ingest whole, with its first problem."""
    bad = report.failed_files
    return {
        **report.summary(),
        "problem_files": [
            {"path": f.path, "status": f.status, "problem": (f.problems or [""])[0][:300]}
            for f in bad[:AUDIT_MAX_FILES]
        ],
        "problem_files_left_out": max(0, len(bad) - AUDIT_MAX_FILES),
    }
