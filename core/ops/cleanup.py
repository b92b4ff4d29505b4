"""`clara admin cleanup`: what the data dir no longer needs, listed before anything goes.

Four kinds of leftovers, each with a reason a person can check:
- staging folders of builds that were killed (core.artifacts: their process is gone);
- job folders whose job row no longer exists (a deleted job, or the row of a data dir that
  was copied without its database);
- checkpoints of succeeded jobs beyond the newest `keep_checkpoints` (the adapter is
  registered; a checkpoint only serves to continue training, and the newest does that);
- dataset exports older than `export_days` (a frozen version exports again identically).

Failed and cancelled jobs keep their checkpoints: a retry resumes from them. `clara up` runs
only the first kind at every start; the rest is for an operator who chose a policy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from core.artifacts import cleanup_leftovers
from core.audit import audited
from core.config import Settings
from core.db import reading
from core.permissions import Principal, require
from core.training.checkpoints import checkpoint_folders


@dataclass(frozen=True)
class CleanupPolicy:
    keep_checkpoints: int | None = 1  # None: leave checkpoints alone
    export_days: float | None = 30.0  # None: leave exports alone
    orphan_jobs: bool = True


# What `clara up` removes at every start: only what killed builds left.
LEFTOVERS_ONLY = CleanupPolicy(keep_checkpoints=None, export_days=None, orphan_jobs=False)


@dataclass(frozen=True)
class CleanupItem:
    path: Path
    bytes: int
    reason: str


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def _job_folders(settings: Settings) -> dict[int, Path]:
    from core.training.jobs import jobs_root

    root = jobs_root(settings)
    if not root.is_dir():
        return {}
    return {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}


def _job_items(engine: Engine, settings: Settings, policy: CleanupPolicy) -> list[CleanupItem]:
    from core.training.models import TrainingJob

    folders = _job_folders(settings)
    if not folders:
        return []
    with reading(engine) as s:
        states = dict(
            s.execute(
                select(TrainingJob.id, TrainingJob.state).where(TrainingJob.id.in_(list(folders)))
            ).all()
        )
    items = []
    for job_id, folder in sorted(folders.items()):
        state = states.get(job_id)
        if state is None:
            if policy.orphan_jobs:
                items.append(CleanupItem(folder, _size(folder), f"job {job_id} no longer exists"))
            continue
        if state == "succeeded" and policy.keep_checkpoints is not None:
            old = checkpoint_folders(folder)
            old = old[: max(0, len(old) - policy.keep_checkpoints)]
            for p in old:
                items.append(
                    CleanupItem(
                        p,
                        _size(p),
                        f"checkpoint of succeeded job {job_id} beyond the newest "
                        f"{policy.keep_checkpoints}",
                    )
                )
    return items


def _export_items(settings: Settings, days: float) -> list[CleanupItem]:
    root = settings.data_path / "exports"
    if not root.is_dir():
        return []
    cutoff = time.time() - days * 86400
    items = []
    for version in sorted(p for p in root.iterdir() if p.is_dir()):
        for export in sorted(p for p in version.iterdir() if p.is_dir()):
            newest = max((f.stat().st_mtime for f in export.rglob("*")), default=0.0)
            if max(newest, export.stat().st_mtime) < cutoff:
                items.append(CleanupItem(export, _size(export), f"export older than {days:g} days"))
    return items


def _leftover_items(settings: Settings) -> list[CleanupItem]:
    return [
        CleanupItem(p, _size(p), "left by a build that was killed")
        for p in cleanup_leftovers(settings.data_path, dry_run=True)
    ]


def _policy_items(engine: Engine, settings: Settings, policy: CleanupPolicy) -> list[CleanupItem]:
    items = _job_items(engine, settings, policy)
    if policy.export_days is not None:
        items += _export_items(settings, policy.export_days)
    return items


def plan_cleanup(engine: Engine, settings: Settings, policy: CleanupPolicy) -> list[CleanupItem]:
    """What `policy` would remove now, with sizes and reasons; removes nothing."""
    return _leftover_items(settings) + _policy_items(engine, settings, policy)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def cleanup(
    engine: Engine,
    actor: Principal,
    settings: Settings,
    policy: CleanupPolicy = CleanupPolicy(),
    *,
    dry_run: bool = False,
) -> list[CleanupItem]:
    """Remove what `policy` names (with `dry_run`, only list it). Audited when anything goes."""
    require(actor, "system:maintain")
    if dry_run:
        return plan_cleanup(engine, settings, policy)
    # Leftovers are removed by core.artifacts itself: it re-checks that each owner is dead.
    items = _leftover_items(settings)
    rest = _policy_items(engine, settings, policy)
    if not items and not rest:
        return []
    root = settings.data_path
    with audited(engine, actor, "system.cleanup", target=str(root)) as audit:
        gone = set(cleanup_leftovers(root))
        items = [i for i in items if i.path in gone]
        for item in rest:
            _remove(item.path)
        items += rest
        audit.detail.update(
            removed=[str(i.path.relative_to(root)) for i in items],
            bytes=sum(i.bytes for i in items),
        )
    return items
