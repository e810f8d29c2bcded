"""Backbone + pooling + head: shapes, mask pooling, and a real-weight sanity check on MiniLM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grft_core.data.preprocess import make_preprocessor
from grft_core.errors import ConfigError
from grft_core.models.classifier import Classifier, create_timm_backbone, mean_pool
from grft_core.models.registry import ModelRegistry


class TestMeanPool:
    def test_ignores_padding(self) -> None:
        hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
        pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
        torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0]]))

    def test_all_padding_gives_zeros(self) -> None:
        pooled = mean_pool(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
        assert torch.isfinite(pooled).all()
        assert not pooled.any()


class TestClassifier:
    def test_image_forward_is_head_of_features(self, registry: ModelRegistry) -> None:
        model, _ = registry.load("tiny-cnn", 3)
        batch = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.zeros(2)}  # extra keys ignored
        with torch.no_grad():
            features = model.features(batch)
            assert features.shape == (2, model.num_features)
            torch.testing.assert_close(model(batch), model.task_head(features))
        assert model.modality == "image"
        assert model.num_labels == 3

    def test_text_features_do_not_depend_on_padding(self, registry: ModelRegistry) -> None:
        model, spec = registry.load("tiny-bert", 2)
        prep = make_preprocessor(spec)
        short = "a short sentence"
        with torch.no_grad():
            alone = model.features(prep([short]))
            padded = model.features(prep([short, "a much longer sentence that forces padding of the first"]))
        assert padded.shape == (2, 64)
        torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)

    def test_text_backbone_has_no_pooler(self, registry: ModelRegistry) -> None:
        model, _ = registry.load("tiny-bert", 2)
        assert getattr(model.backbone, "pooler", None) is None

    def test_minilm_real_weights_rank_paraphrases(self, registry: ModelRegistry) -> None:
        model, spec = registry.load("all-minilm-l6-v2", 2)
        prep = make_preprocessor(spec)
        texts = [
            "A man is playing a guitar on stage.",
            "Someone performs music with a guitar.",
            "The central bank raised interest rates again.",
            "A chef is slicing vegetables in the kitchen.",
        ]
        with torch.no_grad():
            emb = nn.functional.normalize(model.features(prep(texts)), dim=-1)
        sim = emb @ emb.T
        assert model.num_features == 384
        # The paraphrase pair is far closer than either unrelated sentence (random weights give ~equal).
        assert sim[0, 1] > 0.5
        assert sim[0, 1] > sim[0, 2] + 0.3
        assert sim[0, 1] > sim[0, 3] + 0.3

    def test_rejects_bad_arguments(self) -> None:
        backbone = create_timm_backbone("mobilenetv2_035")
        with pytest.raises(ConfigError) as err:
            Classifier(backbone, modality="audio", num_labels=2)
        assert err.value.param == "modality"
        with pytest.raises(ConfigError) as err:
            Classifier(backbone, modality="image", num_labels=0)
        assert err.value.param == "num_labels"

    def test_head_is_a_seeded_linear(self) -> None:
        backbone = create_timm_backbone("mobilenetv2_035")
        a = Classifier(backbone, modality="image", num_labels=4, seed=1)
        b = Classifier(backbone, modality="image", num_labels=4, seed=1)
        assert isinstance(a.task_head, nn.Linear)
        assert a.task_head.in_features == a.num_features == 1280
        torch.testing.assert_close(a.task_head.weight, b.task_head.weight, rtol=0, atol=0)
