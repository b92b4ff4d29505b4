"""The chat engine's stopping criterion must live on the ids' device.

generate() ANDs it with its own flags on the model's device; a CPU tensor there failed every
generation on a GPU ("Expected all tensors to be on the same device"), found by
bench/gpu_check.py. The meta device stands in for a GPU on CPU-only machines.
"""

from __future__ import annotations

import torch

from core.serving.batching import Request, RowsDone


def _requests(n: int) -> list[Request]:
    return [Request([1, 2], key="k", max_new_tokens=10) for _ in range(n)]


def test_row_flags_are_created_on_the_ids_device():
    ids = torch.zeros((2, 5), dtype=torch.long, device="meta")
    requests = _requests(2)
    flags = RowsDone(requests, prompt_width=2)(ids, None)
    assert flags.device == ids.device and flags.shape == (2,) and flags.dtype == torch.bool
    requests[1].cancelled.set()  # a row done: a fresh tensor, on that device too
    flags = RowsDone(requests, prompt_width=2)(ids, None)
    assert flags.device == ids.device and flags.shape == (2,)
    cpu = RowsDone(requests, prompt_width=2)(torch.zeros((2, 3), dtype=torch.long), None)
    assert cpu.tolist() == [False, True]
