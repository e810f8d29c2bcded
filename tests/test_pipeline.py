"""The pipeline on real packaged weights and data: MiniLM on BBC News, through files on disk."""

from __future__ import annotations

import json

import pytest

from grft_core.data.samples import bbc_news_csv
from grft_core.errors import DatasetRejected
from grft_core.method.config import GRFTConfig
from grft_core.pipeline import evaluate_adapter, train_to_folder


@pytest.mark.slow
def test_minilm_learns_bbc_news_with_grft(registry, tmp_path):
    data = bbc_news_csv(tmp_path, limit_per_class=30)
    out = tmp_path / "adapter"
    config = GRFTConfig(
        k=2, l2_lambda=1e-4, epochs=3, batch_size=16, lr=3e-3, max_length=96,
        selection_samples=48, val_fraction=0.2,
    )  # fmt: skip
    metrics = train_to_folder("all-minilm-l6-v2", str(data), out, config, registry=registry)
    # Five classes: an untrained head is near 0.2; the pre-trained encoder with GRFT goes far above.
    assert metrics["initial_val_accuracy"] < 0.5
    assert metrics["best_val_accuracy"] >= 0.8
    assert metrics["trainable_share"] < 0.01
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert saved["preprocessing"]["max_length"] == 96
    result = evaluate_adapter(out, str(data), registry)
    assert result["accuracy"] >= 0.8


def test_eval_rejects_unknown_labels(registry, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(
        "text,label\n" + "".join(f"goal match {i},sport\nshares bank {i},money\n" for i in range(6))
    )
    out = tmp_path / "ad"
    train_to_folder(
        "tiny-bert", str(train), out,
        GRFTConfig(epochs=1, batch_size=4, selection_samples=4, selection_batch_size=4), registry=registry,
    )  # fmt: skip
    other = tmp_path / "other.csv"
    other.write_text("text,label\nfilm award,culture\ngoal match,sport\n")
    with pytest.raises(DatasetRejected, match="labels not known to the adapter: culture"):
        evaluate_adapter(out, str(other), registry)
