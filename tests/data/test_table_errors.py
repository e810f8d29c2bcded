"""Malformed tables are rejected with a message and a param that name the line or row at fault."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from tests.data.helpers import png_bytes, rejected, write_csv, write_jsonl


class TestTableErrors:
    def test_missing_label_column(self, tmp_path):
        error = rejected(str(write_csv(tmp_path / "t.csv", [["a", "b"]], header=("text", "tag"))))
        assert "no `label` column" in error.message
        # The expected columns are named; the file's own header is not echoed (it may be no dataset).
        assert "`text` or an `image` column" in error.message
        assert "tag" not in error.message
        assert error.param == "label"

    def test_missing_text_and_image(self, tmp_path):
        error = rejected(str(write_jsonl(tmp_path / "t.jsonl", [{"body": "a", "label": 1}])))
        assert "neither a `text` nor an `image` column" in error.message
        assert error.param == "text"

    def test_empty_text_counts_physical_lines(self, tmp_path):
        path = write_csv(tmp_path / "t.csv", [["first\nsecond", "a"], ["ok", "b"], ["   ", "a"]])
        error = rejected(str(path))
        assert error.message == "t.csv: empty text on line 5"
        assert error.param == "line 5"

    def test_null_label_jsonl(self, tmp_path):
        path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}])
        error = rejected(str(path))
        assert "null label on line 2" in error.message
        assert error.param == "line 2"

    def test_text_not_a_string(self, tmp_path):
        path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": 7, "label": "y"}])
        error = rejected(str(path))
        assert "text on line 2 is a int" in error.message
        assert error.param == "line 2"

    def test_null_label_parquet_row(self, tmp_path):
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [1, 2, None]}), path)
        error = rejected(str(path))
        assert "null label on row 3" in error.message
        assert error.param == "row 3"

    def test_invalid_json_line(self, tmp_path):
        path = tmp_path / "t.jsonl"
        path.write_text('{"text": "a", "label": 1}\n\n{"text": \n', encoding="utf-8")
        error = rejected(str(path))
        assert "line 3 is not valid JSON" in error.message
        assert error.param == "line 3"

    def test_wrong_field_count(self, tmp_path):
        path = tmp_path / "t.csv"
        path.write_text("text,label\na,x\nb,y,z\n", encoding="utf-8")
        error = rejected(str(path))
        assert "line 3 has 3 fields" in error.message
        assert error.param == "line 3"

    def test_not_utf8(self, tmp_path):
        path = tmp_path / "t.csv"
        path.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
        error = rejected(str(path))
        assert "not UTF-8" in error.message
        assert error.param == "t.csv"

    def test_unreadable_parquet(self, tmp_path):
        (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
        error = rejected(str(tmp_path / "t.parquet"))
        assert "not a readable Parquet file" in error.message
        assert error.param == "t.parquet"

    def test_corrupt_image_row(self, tmp_path):
        path = tmp_path / "i.parquet"
        pq.write_table(pa.table({"image": [png_bytes(), b"garbage"], "label": ["a", "b"]}), path)
        error = rejected(str(path))
        assert "cannot read image i.parquet row 2" in error.message
        assert error.param == "row 2"

    def test_image_path_escaping_folder(self, tmp_path):
        (tmp_path / "outside.png").write_bytes(png_bytes())
        (tmp_path / "sub").mkdir()
        path = write_csv(
            tmp_path / "sub" / "i.csv", [["../outside.png", "a"], ["../outside.png", "b"]], ("image", "label")
        )
        error = rejected(str(path))
        assert "escapes the dataset folder" in error.message
        assert error.param == "line 2"

    def test_missing_image_file(self, tmp_path):
        path = write_csv(tmp_path / "i.csv", [["nowhere.png", "a"]], header=("image", "label"))
        error = rejected(str(path))
        assert "'nowhere.png' is neither a file" in error.message
        assert error.param == "line 2"

    def test_one_class(self, tmp_path):
        error = rejected(str(write_csv(tmp_path / "t.csv", [["a", "x"], ["b", "x"]])))
        assert "needs at least 2 classes" in error.message
        assert error.param == "label"
