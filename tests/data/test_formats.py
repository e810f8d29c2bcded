"""Table formats (CSV, JSON lines, Parquet, tables inside zips) and saved Hugging Face datasets load into
the same LabeledData."""

from __future__ import annotations

import base64
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grft_core.data.loading import load_dataset
from tests.data.helpers import COLORS, png_bytes, rejected, write_csv, write_jsonl


class TestTables:
    def test_csv_text_with_multiline_and_int_labels(self, tmp_path):
        path = write_csv(tmp_path / "t.csv", [["one\nspans lines", "10"], ["two", "2"], ["three", "10"]])
        loaded = load_dataset(str(path))
        assert loaded.modality == "text"
        assert loaded.classes == ["2", "10"]
        assert loaded.items == ["one\nspans lines", "two", "three"]
        assert loaded.labels == [1, 0, 1]

    def test_jsonl_mixed_int_labels(self, tmp_path):
        rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 1.0}]
        loaded = load_dataset(str(write_jsonl(tmp_path / "t.jsonl", rows)))
        assert loaded.classes == ["0", "1"]
        assert loaded.labels == [1, 0, 1]

    def test_parquet_text(self, tmp_path):
        path = tmp_path / "t.parquet"
        pq.write_table(
            pa.table({"text": ["x", "y", "z"], "label": ["b", "a", "b"], "extra": [1, 2, 3]}), path
        )
        loaded = load_dataset(str(path))
        assert loaded.classes == ["a", "b"]
        assert loaded.labels == [1, 0, 1]
        assert loaded.items == ["x", "y", "z"]

    def test_parquet_image_bytes_and_struct(self, tmp_path):
        path = tmp_path / "i.parquet"
        red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
        pq.write_table(pa.table({"image": [red, blue], "label": ["cat", "dog"]}), path)
        loaded = load_dataset(str(path))
        assert loaded.modality == "image"
        assert [im.getpixel((1, 1)) for im in loaded.items] == [
            COLORS["cat"],
            (0, 0, 255),
        ]
        struct = tmp_path / "s.parquet"
        cells = [{"bytes": red, "path": None}, {"bytes": blue, "path": None}]
        pq.write_table(pa.table({"image": cells, "label": [0, 1]}), struct)
        assert load_dataset(str(struct)).classes == ["0", "1"]

    def test_csv_image_base64_and_relative_path(self, tmp_path):
        (tmp_path / "imgs").mkdir()
        (tmp_path / "imgs" / "b.png").write_bytes(png_bytes((0, 0, 255)))
        encoded = base64.b64encode(png_bytes((255, 0, 0))).decode()
        rows = [[encoded, "cat"], ["imgs/b.png", "dog"], ["data:image/png;base64," + encoded, "cat"]]
        loaded = load_dataset(str(write_csv(tmp_path / "i.csv", rows, header=("image", "label"))))
        assert [im.getpixel((0, 0)) for im in loaded.items] == [(255, 0, 0), (0, 0, 255), (255, 0, 0)]

    def test_jsonl_image_path(self, tmp_path):
        (tmp_path / "a.png").write_bytes(png_bytes())
        rows = [{"image": "a.png", "label": "x"}, {"image": "a.png", "label": "y"}]
        assert len(load_dataset(str(write_jsonl(tmp_path / "i.jsonl", rows)))) == 2

    def test_csv_in_zip(self, tmp_path):
        archive = tmp_path / "t.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("data/t.csv", "text,label\nhello,a\nworld,b\n")
        assert load_dataset(str(archive)).items == ["hello", "world"]

    def test_max_items_takes_classes_in_turn(self, tmp_path):
        rows = [[f"a{i}", "a"] for i in range(6)] + [[f"b{i}", "b"] for i in range(2)] + [["c0", "c"]]
        loaded = load_dataset(str(write_csv(tmp_path / "t.csv", rows)), max_items=5)
        assert loaded.items == ["a0", "a1", "b0", "b1", "c0"]
        with pytest.raises(ValueError, match="max_items"):
            load_dataset(str(tmp_path / "t.csv"), max_items=0)


class TestSavedDataset:
    @pytest.fixture(autouse=True)
    def _quiet(self):
        import datasets

        datasets.disable_progress_bars()

    def test_text_with_class_label(self, tmp_path):
        import datasets

        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["z", "a"])}
        )
        datasets.Dataset.from_dict(
            {"text": ["p", "q", "r"], "label": [0, 1, 0]}, features=features
        ).save_to_disk(tmp_path / "ds")
        loaded = load_dataset(str(tmp_path / "ds"))
        assert loaded.classes == ["a", "z"]
        assert loaded.labels == [1, 0, 1]
        assert loaded.items == ["p", "q", "r"]

    def test_image_dataset_dict(self, tmp_path):
        import datasets

        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
        )
        cells = [
            {"bytes": png_bytes(COLORS["cat"]), "path": None},
            {"bytes": png_bytes(COLORS["dog"]), "path": None},
        ]
        split = datasets.Dataset.from_dict({"image": cells, "label": [0, 1]}, features=features)
        datasets.DatasetDict({"train": split, "test": split}).save_to_disk(tmp_path / "dd")
        loaded = load_dataset(str(tmp_path / "dd"))
        assert loaded.classes == ["cat", "dog"]
        assert loaded.items[1].getpixel((0, 0)) == COLORS["dog"]

    def test_missing_label_index(self, tmp_path):
        import datasets

        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
        )
        datasets.Dataset.from_dict({"text": ["p", "q"], "label": [0, -1]}, features=features).save_to_disk(
            tmp_path / "ds"
        )
        error = rejected(str(tmp_path / "ds"))
        assert "null label on row 2" in error.message
        assert error.param == "row 2"
