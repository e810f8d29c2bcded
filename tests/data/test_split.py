"""LabeledData subsets, the seeded stratified train/validation split, and load_train_val."""

from __future__ import annotations

from collections import Counter

import pytest

from grft_core.data.loading import LabeledData, load_train_val, stratified_split
from grft_core.errors import DatasetRejected
from tests.data.helpers import image_folder, write_csv, write_jsonl


class TestLabeledData:
    def test_subset_keeps_classes_and_source(self):
        full = LabeledData("text", ["a", "b", "c"], [0, 1, 0], ["x", "y"], "mem")
        part = full.subset([2, 0])
        assert (part.items, part.labels, part.classes, part.source) == (["c", "a"], [0, 0], ["x", "y"], "mem")
        assert len(part) == 2
        assert len(full) == 3


def _labelled(counts: dict[str, int]) -> LabeledData:
    classes = sorted(counts)
    labels = [index for index, name in enumerate(classes) for _ in range(counts[name])]
    return LabeledData("text", [f"t{i}" for i in range(len(labels))], labels, classes, "mem")


class TestStratifiedSplit:
    def test_properties(self):
        full = _labelled({"a": 50, "b": 20, "c": 3, "d": 2, "e": 1})
        train, val = stratified_split(full, 0.2, seed=3)
        assert sorted(train.items + val.items) == sorted(full.items)
        assert not set(train.items) & set(val.items)
        assert train.classes == val.classes == full.classes
        assert Counter(val.labels) == {0: 10, 1: 4, 2: 1, 3: 1}
        assert Counter(train.labels) == {0: 40, 1: 16, 2: 2, 3: 1, 4: 1}
        assert [int(t[1:]) for t in train.items] == sorted(int(t[1:]) for t in train.items)

    def test_seeded(self):
        full = _labelled({"a": 30, "b": 30})
        assert stratified_split(full, 0.3, 1)[1].items == stratified_split(full, 0.3, 1)[1].items
        assert stratified_split(full, 0.3, 1)[1].items != stratified_split(full, 0.3, 2)[1].items

    @pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
    def test_bad_fraction(self, fraction):
        with pytest.raises(ValueError, match="val_fraction"):
            stratified_split(_labelled({"a": 2, "b": 2}), fraction, 0)


class TestLoadTrainVal:
    def test_split_without_val(self, tmp_path):
        rows = [[f"text {i}", "pos" if i % 2 else "neg"] for i in range(20)]
        train, val = load_train_val(str(write_csv(tmp_path / "t.csv", rows)), val_fraction=0.25, seed=0)
        assert (len(train), len(val)) == (14, 6)
        assert train.classes == val.classes == ["neg", "pos"]

    def test_separate_val_maps_labels(self, tmp_path):
        train_path = write_csv(tmp_path / "train.csv", [["a", "2"], ["b", "10"], ["c", "10"]])
        val_path = write_jsonl(
            tmp_path / "val.jsonl", [{"text": "d", "label": 10}, {"text": "e", "label": 2}]
        )
        train, val = load_train_val(str(train_path), str(val_path))
        assert train.classes == val.classes == ["2", "10"]
        assert [val.classes[label] for label in val.labels] == ["10", "2"]

    def test_label_sets_differ(self, tmp_path):
        train_path = write_csv(tmp_path / "train.csv", [["a", "x"], ["b", "y"], ["c", "z"]])
        val_path = write_csv(tmp_path / "val.csv", [["a", "x"], ["b", "w"]])
        with pytest.raises(DatasetRejected) as info:
            load_train_val(str(train_path), str(val_path))
        assert "only in training: ['y', 'z']" in info.value.message
        assert "only in validation: ['w']" in info.value.message
        assert info.value.param == "label"

    def test_modality_differs(self, tmp_path):
        train_path = write_csv(tmp_path / "train.csv", [["a", "cat"], ["b", "dog"]])
        val_root = image_folder(tmp_path / "val", {"cat": 1, "dog": 1})
        with pytest.raises(DatasetRejected, match="holds text but the validation data holds image"):
            load_train_val(str(train_path), str(val_root))

    def test_too_small_to_split(self, tmp_path):
        with pytest.raises(DatasetRejected) as info:
            load_train_val(str(write_csv(tmp_path / "t.csv", [["a", "x"], ["b", "y"]])))
        assert "too small to hold out" in info.value.message
        assert info.value.param == "val_fraction"
