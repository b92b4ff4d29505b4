"""Every file or folder the workbench produces is made here the same way.

A build happens in a staging folder next to its final place and is renamed into place only
when it is complete, so a reader never sees half an artifact and a killed build leaves only
a staging folder, which `cleanup_leftovers` removes. A manifest describes what was made:
its kind, what it was made from, the sha256 of every file and the library versions.
`build_once` adds a file lock for artifacts that several processes may ask for at once
(the demo model, the ONNX embedder, test fixtures).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from core.errors import ClaraError

MANIFEST = "manifest.json"
# Staging folders: `.clara-staging-<final name>-<host>-<pid>-<random>`, next to the final
# place. <host> is a short hash of this machine's name: a data dir shared by several
# machines must never lose a build that runs elsewhere to our cleanup.
STAGING_PREFIX = ".clara-staging-"
HOST_TAG = hashlib.sha256(platform.node().encode()).hexdigest()[:8]
_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "sentence-transformers",
    "onnxruntime",
    "pyarrow",
    "clara-workbench",
)


class ArtifactError(ClaraError):
    """An artifact cannot be made or read (it exists already, its manifest is wrong...)."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """The versions that made an artifact: enough to tell why two results differ."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _staging_name(final: Path) -> str:
    return f"{STAGING_PREFIX}{final.name}-{HOST_TAG}-{os.getpid()}-{os.urandom(4).hex()}"


@contextmanager
def staged_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success rename it to `final`, on error remove it.

    `replace=True` swaps out an existing `final` (the old one is removed after the rename,
    so `final` is never missing); otherwise an existing `final` is an error.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not replace:
        raise ArtifactError(f"{final} exists already")
    staging = final.parent / _staging_name(final)
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            old = final.parent / _staging_name(final)
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_manifest(folder: Path, kind: str, **fields: Any) -> dict[str, Any]:
    """Describe `folder`: kind, the given fields, sha256 and size of every file, versions."""
    folder = Path(folder)
    # Only this folder's own manifest is left out: a folder holding other artifacts (a
    # backup) lists their manifests like any other file.
    own = folder / MANIFEST
    files = {
        str(p.relative_to(folder)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p != own
    }
    manifest = {
        "kind": kind,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
        "files": files,
        "library_versions": fields.get("library_versions") or library_versions(),
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(folder / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_manifest(folder: Path) -> list[str]:
    """What does not match the manifest (missing, changed or unlisted files); [] when sound."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder / MANIFEST}: missing or not JSON"]
    listed = manifest.get("files") or {}
    problems = []
    for rel, info in sorted(listed.items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(path) != info.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest")
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not in the manifest")
    return problems


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (released when the holder dies, too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(target: Path) -> Path:
    return Path(target).parent / f".{Path(target).name}.lock"


def lock_is_held(target: Path) -> bool:
    """Whether some process holds `target`'s build lock now (a build is under way)."""
    path = lock_path(target)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def build_once(
    target: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], Any]
) -> Path:
    """`target`, built by `build(staging_folder)` unless it is complete already.

    Two processes asking at once: one builds, the other waits for the lock and then finds
    it complete. An incomplete `target` (a copy interrupted by hand, an older format) is
    replaced; leftovers of killed builds of this target are removed first.
    """
    target = Path(target)
    with file_lock(lock_path(target)):
        if target.exists() and is_complete(target):
            return target
        _remove_staging(target.parent, target.name)
        with staged_dir(target, replace=True) as staging:
            build(staging)
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) from a staging name, or None for a name `_staging_name` did not make."""
    parts = name.rsplit("-", 3)
    if len(parts) != 4 or not parts[2].isdigit() or len(parts[1]) != len(HOST_TAG):
        return None
    return parts[1], int(parts[2])


def _remove_if_orphaned(p: Path, dry_run: bool = False) -> bool:
    """Remove a staging entry made on this machine by a process that is gone."""
    owner = _staging_owner(p.name if p.is_dir() else p.name.removesuffix(p.suffix))
    if owner is None or owner[0] != HOST_TAG:
        return False  # not ours, or made on another machine sharing this data dir
    if owner[1] != os.getpid() and _pid_alive(owner[1]):
        return False  # a build under way in another process
    if dry_run:
        return True
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
    return True


def _remove_staging(parent: Path, final_name: str) -> list[Path]:
    return [p for p in parent.glob(f"{STAGING_PREFIX}{final_name}-*") if _remove_if_orphaned(p)]


def cleanup_leftovers(
    root: Path, *, max_depth: int = 4, min_age_s: float = 0.0, dry_run: bool = False
) -> list[Path]:
    """Remove staging folders and files that killed builds left anywhere under `root`.

    A staging entry whose owning process is still alive is kept; so is one younger than
    `min_age_s` (a build that started a moment ago in a process we cannot see).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.name.startswith(STAGING_PREFIX):
                try:
                    age = now - p.stat().st_mtime
                except OSError:
                    continue
                if age >= min_age_s and _remove_if_orphaned(p, dry_run):
                    removed.append(p)
            elif p.is_dir() and not p.is_symlink() and depth < max_depth:
                stack.append((p, depth + 1))
    return removed
