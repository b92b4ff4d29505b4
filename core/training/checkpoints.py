"""Where a job's checkpoints are and which of them count: one light module (no torch), for
the trainer that resumes from them and for the cleanup that removes old ones."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = "checkpoints"


def checkpoint_step(path: str | Path | None) -> int | None:
    """The step of a `.../checkpoint-N` folder name."""
    if not path:
        return None
    tail = Path(path).name
    step = tail.removeprefix("checkpoint-")
    return int(step) if tail.startswith("checkpoint-") and step.isdigit() else None


def checkpoint_usable(path: str | Path | None) -> bool:
    """The trainer finished writing it (its trainer_state.json exists)."""
    return bool(path) and (Path(path) / "trainer_state.json").exists()


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """A job's checkpoint folders, oldest step first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    steps = [(checkpoint_step(p), p) for p in folder.glob("checkpoint-*") if p.is_dir()]
    return [p for step, p in sorted((s, p) for s, p in steps if s is not None)]


def latest_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint the trainer finished writing.

    A process killed while saving leaves a newer, half-written checkpoint folder behind:
    resume from the newest complete one before it, never start over because of it.
    """
    for p in reversed(checkpoint_folders(output_dir)):
        if checkpoint_usable(p):
            return str(p)
    return None
