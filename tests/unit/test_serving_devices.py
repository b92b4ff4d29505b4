"""The chat engine's stopping criterion must live on the ids' device.

generate() ANDs it with its own flags on the model's device; a CPU tensor there failed every
generation on a GPU ("Expected all tensors to be on the same device"), found by
bench/gpu_check.py. The meta device stands in for a GPU on CPU-only machines.
"""

from __future__ import annotations

import torch

from core.serving.engine import _Cancel


def test_cancel_flags_are_created_on_the_ids_device():
    ids = torch.zeros((2, 5), dtype=torch.long, device="meta")
    cancel = _Cancel()
    flags = cancel(ids, None)
    assert flags.device == ids.device and flags.shape == (2,) and flags.dtype == torch.bool
    cpu_ids = torch.zeros((1, 3), dtype=torch.long)
    cancel.event.set()
    assert cancel(cpu_ids, None).tolist() == [True]
