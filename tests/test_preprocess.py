"""Preprocessing: values from the model, size override, deterministic augmentation, tokenisation."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from grft_core.data.preprocess import (
    ImagePreprocessor,
    TextPreprocessor,
    make_preprocessor,
    preprocessor_from_dict,
)
from grft_core.errors import ConfigError, DatasetRejected
from grft_core.models.registry import ModelRegistry


def _images(n: int = 3) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    arrays = torch.randint(0, 256, (n, 40, 48, 3), generator=gen, dtype=torch.uint8).numpy()
    return [Image.fromarray(a) for a in arrays]


class TestImage:
    def test_values_come_from_the_model(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("mobilenetv2_100"))
        assert isinstance(prep, ImagePreprocessor)
        info = prep.to_dict()
        assert info["mean"] == pytest.approx(IMAGENET_DEFAULT_MEAN)
        assert info["std"] == pytest.approx(IMAGENET_DEFAULT_STD)
        assert info["input_size"] == [3, 224, 224]
        assert info["interpolation"] == "bicubic"
        assert info["crop_pct"] == pytest.approx(0.875)
        vit = make_preprocessor(registry.get("tiny-vit")).to_dict()
        assert vit["mean"] == [0.5, 0.5, 0.5]
        assert vit["input_size"] == [3, 32, 32]

    def test_image_size_override_and_normalisation(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("mobilenetv2_100"), image_size=32)
        colour = (200, 100, 50)
        out = prep([Image.new("RGB", (8, 8), colour), Image.new("L", (10, 6), 128)])["pixel_values"]
        assert out.shape == (2, 3, 32, 32)
        assert out.dtype == torch.float32
        mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
        expected = (torch.tensor(colour) / 255 - mean) / std
        torch.testing.assert_close(out[0, :, 16, 16], expected, rtol=1e-4, atol=1e-4)
        grey = (torch.full((3,), 128 / 255) - mean) / std  # an "L" image becomes three equal channels
        torch.testing.assert_close(out[1, :, 16, 16], grey, rtol=1e-4, atol=1e-4)

    def test_fixed_size_model_refuses_other_sizes(self, registry: ModelRegistry) -> None:
        spec = registry.get("tiny-vit")
        assert make_preprocessor(spec, image_size=32).to_dict()["input_size"] == [3, 32, 32]
        with pytest.raises(ConfigError) as err:
            make_preprocessor(spec, image_size=64)
        assert err.value.param == "image_size"
        with pytest.raises(ConfigError):
            make_preprocessor(registry.get("mobilenetv2_100"), image_size=4)

    def test_augment_is_deterministic_given_the_generator(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("mobilenetv2_100"), image_size=32)
        images = _images()
        rng = torch.get_rng_state()
        a = prep.augment(images, torch.Generator().manual_seed(1))["pixel_values"]
        b = prep.augment(images, torch.Generator().manual_seed(1))["pixel_values"]
        c = prep.augment(images, torch.Generator().manual_seed(2))["pixel_values"]
        assert torch.equal(torch.get_rng_state(), rng)
        assert a.shape == (3, 3, 32, 32)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, c)
        assert not torch.allclose(a, prep(images)["pixel_values"])

    def test_eval_is_deterministic(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("tiny-cnn"), image_size=32)
        images = _images()
        torch.testing.assert_close(prep(images), prep(images), rtol=0, atol=0)

    def test_round_trip_through_dict(self, registry: ModelRegistry) -> None:
        spec = registry.get("mobilenetv2_100")
        prep = make_preprocessor(spec, image_size=48)
        again = preprocessor_from_dict(json.loads(json.dumps(prep.to_dict())), spec)
        torch.testing.assert_close(prep(_images()), again(_images()), rtol=0, atol=0)
        with pytest.raises(ConfigError):
            preprocessor_from_dict({"modality": "text"}, spec)

    def test_rejects_non_images(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("tiny-cnn"), image_size=32)
        with pytest.raises(DatasetRejected):
            prep(["not an image"])
        assert prep([])["pixel_values"].shape == (0, 3, 32, 32)


class TestText:
    def test_pads_to_longest_and_truncates(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("all-minilm-l6-v2"), max_length=8)
        assert isinstance(prep, TextPreprocessor)
        assert prep.modality == "text"
        batch = prep(["hello world", "one two three four five six seven eight nine ten"])
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
        assert batch["input_ids"].shape == (2, 8)
        assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0]
        short = prep(["hi", "hello there"])
        assert short["input_ids"].shape == (2, 4)  # [CLS] hello there [SEP]: padding to the longest only

    def test_default_max_length_respects_the_model(self, registry: ModelRegistry) -> None:
        assert make_preprocessor(registry.get("all-minilm-l6-v2")).to_dict()["max_length"] == 256
        tiny = make_preprocessor(registry.get("tiny-bert"))
        assert tiny.to_dict()["max_length"] == 128  # tiny-bert has 128 position embeddings
        with pytest.raises(ConfigError) as err:
            make_preprocessor(registry.get("tiny-bert"), max_length=512)
        assert err.value.param == "max_length"

    def test_augment_equals_eval(self, registry: ModelRegistry) -> None:
        prep = make_preprocessor(registry.get("tiny-bert"))
        texts = ["some text", "more text here"]
        assert prep.augment(texts, torch.Generator().manual_seed(0)).keys() == prep(texts).keys()
        for key, value in prep(texts).items():
            assert torch.equal(prep.augment(texts, torch.Generator())[key], value)

    def test_round_trip_and_rejects_non_strings(self, registry: ModelRegistry) -> None:
        spec = registry.get("tiny-bert")
        prep = make_preprocessor(spec, max_length=16)
        assert preprocessor_from_dict(prep.to_dict(), spec).to_dict() == prep.to_dict()
        with pytest.raises(DatasetRejected):
            prep([3])
        assert prep([])["input_ids"].shape == (0, 0)
