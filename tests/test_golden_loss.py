"""Golden losses: a few seeded GRFT steps on tiny built-in models reproduce stored per-step losses.

Any change that moves the numbers of training (selection, the layer wrappers, the L2 term, the
optimizer groups, the schedule, batching order, preprocessing, the head's initialisation) shows here as
a loss that no longer matches ``tests/golden/losses.json``. That is the point: a deliberate change of
the numbers must come with regenerated values, reviewed in the diff.

To regenerate (after checking the change is intended)::

    GRFT_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 uv run --frozen pytest -q tests/test_golden_loss.py

In that mode each case rewrites its entry in the JSON file and then *fails* with a message, so an update
run is never mistaken for a passing one; run the file again without the variable to see it pass.

The runs are pinned to one CPU thread with deterministic algorithms on, so the values do not depend on
the machine's core count. Tolerances (rtol 1e-4, atol 1e-5) are far below any real change of the method,
which moves losses in the second or third digit, yet leave room for the last-bit differences between
CPU instruction sets (AVX2 vs AVX-512 kernels) across machines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from grft_core.data.preprocess import make_preprocessor
from grft_core.method.config import GRFTConfig
from grft_core.method.trainer import fit
from tests.conftest import make_images, make_texts

GOLDEN_FILE = Path(__file__).parent / "golden" / "losses.json"
UPDATE_ENV = "GRFT_UPDATE_GOLDEN"
RTOL, ATOL = 1e-4, 1e-5

# 24 training items in batches of 8: 3 steps an epoch, 2 epochs, so 6 optimizer steps per case, with
# the warm-up (10% of 6 steps rounds to 0) off and the cosine decay reaching 0 on the last step.
# lr 5e-3 is large enough that every step visibly moves the loss.
BASE = GRFTConfig(
    k=2,
    epochs=2,
    batch_size=8,
    lr=5e-3,
    selection_samples=16,
    selection_batch_size=8,
    device="cpu",
    precision="fp32",
    seed=0,
)


@dataclass(frozen=True)
class Case:
    model: str
    method: str
    num_labels: int

    @property
    def key(self) -> str:
        return f"{self.model}/{self.method}"


CASES = [
    Case("tiny-vit", "grft", 2),
    Case("tiny-vit", "masked_dense", 2),
    Case("tiny-cnn", "grft", 2),
    Case("tiny-bert", "grft", 3),
]


def _data(case: Case) -> tuple[list[Any], list[int], dict[str, int]]:
    if case.model == "tiny-bert":
        items, labels = make_texts(32, case.num_labels, seed=0)
        return items, labels, {"max_length": 16}
    images, labels = make_images(32, case.num_labels, seed=0, size=32)
    return images, labels, {"image_size": 32}


def _run(registry: Any, case: Case) -> dict[str, list[float]]:
    items, labels, sizes = _data(case)
    config = BASE.replace(method=case.method)
    model, spec = registry.load(case.model, num_labels=case.num_labels, seed=config.seed)
    preprocessor = make_preprocessor(spec, **sizes)
    result = fit(
        model,
        items[:24],
        labels[:24],
        items[24:],
        labels[24:],
        preprocessor,
        config,
        evaluate_initial=False,
    )
    assert result.steps == 6
    # Per-step losses see the weights before each step; the validation losses also see the last step.
    return {"losses": result.losses, "val_losses": [h.val_loss for h in result.history]}


@pytest.fixture
def deterministic_cpu() -> Iterator[None]:
    """One thread and deterministic kernels for the test, the previous settings restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _read_golden() -> dict[str, Any]:
    if not GOLDEN_FILE.is_file():
        return {"cases": {}}
    return json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _write_golden(key: str, values: dict[str, list[float]]) -> None:
    cases = {**_read_golden()["cases"], key: values}
    doc = {
        "_about": (
            "Per-step training losses and per-epoch validation losses of tests/test_golden_loss.py. "
            f"Regenerate with {UPDATE_ENV}=1 (see that file's docstring); never edit by hand."
        ),
        "recorded_with_torch": torch.__version__,
        "cases": dict(sorted(cases.items())),
    }
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


@pytest.mark.usefixtures("deterministic_cpu")
@pytest.mark.parametrize("case", CASES, ids=[case.key for case in CASES])
def test_losses_match_golden_values(registry: Any, case: Case) -> None:
    actual = _run(registry, case)
    if os.environ.get(UPDATE_ENV) == "1":
        _write_golden(case.key, actual)
        pytest.fail(f"{UPDATE_ENV}=1: rewrote {case.key} in {GOLDEN_FILE}; rerun without it to check")
    expected = _read_golden()["cases"].get(case.key)
    if expected is None:
        pytest.fail(f"no golden values for {case.key} in {GOLDEN_FILE}; generate them with {UPDATE_ENV}=1")
    for name in ("losses", "val_losses"):
        torch.testing.assert_close(
            torch.tensor(actual[name], dtype=torch.float64),
            torch.tensor(expected[name], dtype=torch.float64),
            rtol=RTOL,
            atol=ATOL,
            msg=lambda m, n=name: f"{case.key} {n} drifted from the golden values:\n{m}",
        )


def test_same_run_twice_is_bitwise_identical(registry: Any, deterministic_cpu: None) -> None:
    # The golden tolerance is only meaningful if the run itself is exactly repeatable in one process.
    case = CASES[0]
    assert _run(registry, case) == _run(registry, case)
