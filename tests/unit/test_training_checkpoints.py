"""Resume picks the newest checkpoint the trainer finished writing."""

from __future__ import annotations

from core.training.checkpoints import CHECKPOINT_DIR, latest_checkpoint


def _checkpoint(root, step: int, complete: bool) -> None:
    folder = root / CHECKPOINT_DIR / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (folder / "trainer_state.json").write_text("{}")


def test_a_half_written_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    # A worker killed while saving step 8 leaves checkpoint-8 without its trainer state;
    # resuming must continue after step 4, not start over (seen as a flaky resume test).
    _checkpoint(tmp_path, 4, complete=True)
    _checkpoint(tmp_path, 8, complete=False)
    _checkpoint(tmp_path, 12, complete=False)
    assert latest_checkpoint(tmp_path) == str(tmp_path / CHECKPOINT_DIR / "checkpoint-4")


def test_numeric_order_and_nothing_to_resume(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 9, complete=True)
    _checkpoint(tmp_path, 10, complete=True)
    assert latest_checkpoint(tmp_path).endswith("checkpoint-10")
    (tmp_path / CHECKPOINT_DIR / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path).endswith("checkpoint-10")
