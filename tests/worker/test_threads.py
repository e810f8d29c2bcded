"""``GRFT_TORCH_THREADS``: the worker's training uses the configured intra-op thread count."""

from __future__ import annotations

import torch

from api.settings import Settings
from worker.runner import apply_torch_threads


def test_torch_threads_setting_is_applied_and_zero_keeps_the_default(tmp_path) -> None:
    before = torch.get_num_threads()
    try:
        apply_torch_threads(Settings(home=tmp_path, torch_threads=0))
        assert torch.get_num_threads() == before
        apply_torch_threads(Settings(home=tmp_path, torch_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
