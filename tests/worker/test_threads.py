"""``GRFT_TORCH_THREADS``: the worker's training uses the configured intra-op thread count."""

from __future__ import annotations

import torch

from domain.settings import Settings
from worker.runner import apply_torch_threads


def test_torch_threads_setting_is_applied_and_zero_keeps_the_default(tmp_path) -> None:
    before = torch.get_num_threads()
    try:
        apply_torch_threads(Settings(home=tmp_path, torch_threads=0))
        assert torch.get_num_threads() == before
        target = 2 if before == 1 else 1  # differs from the default, whatever the environment set
        apply_torch_threads(Settings(home=tmp_path, torch_threads=target))
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)
