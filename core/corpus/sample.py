"""The sample corpus shipped in examples/corpus (German municipal documents)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from core.config import Settings
from core.corpus.ingest import IngestOptions, ingest_paths
from core.corpus.ingest_report import IngestReport, Progress
from core.permissions import Principal

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "corpus"
# The folder's README describes the corpus; broken/ holds deliberately bad test files.
SAMPLE_EXCLUDE = ["README.md", "broken/*", "*/README.md"]


def sample_available() -> bool:
    return SAMPLE_DIR.is_dir()


def load_sample(
    engine: Engine,
    actor: Principal,
    settings: Settings | None = None,
    embed: bool = True,
    progress: Progress | None = None,
) -> IngestReport:
    opts = IngestOptions(exclude=SAMPLE_EXCLUDE, embed=embed)
    return ingest_paths(engine, actor, [SAMPLE_DIR], opts, settings, progress)
