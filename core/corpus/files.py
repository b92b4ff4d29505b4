"""Which files an ingest takes: the files named, and the supported files under the folders
named, filtered by glob patterns."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from core.corpus.readers import SUPPORTED_SUFFIXES


def collect_files(
    paths: Iterable[str | Path], globs: list[str] | None = None, exclude: list[str] | None = None
) -> list[Path]:
    """Files under `paths` (folders recursively), filtered by glob patterns.

    A pattern matches the path relative to the folder given or the bare file name, so both
    `*.md` and `satzungen/**/*.pdf` work. Explicitly named files are always taken.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_file():
            out.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p).as_posix()
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                continue
            if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if globs and not any(_glob(rel, f.name, g) for g in globs):
                continue
            if exclude and any(_glob(rel, f.name, g) for g in exclude):
                continue
            out.append(f)
    seen: dict[Path, None] = {}
    for f in out:
        seen.setdefault(f.resolve(), None)
    return list(seen)


def _glob(rel: str, name: str, pattern: str) -> bool:
    return (
        fnmatch.fnmatch(rel, pattern)
        or fnmatch.fnmatch(name, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))
    )
