"""Loading labelled datasets from every supported format and URI, with real files in tmp_path."""

from __future__ import annotations

import base64
import csv
import functools
import http.server
import io
import json
import shutil
import ssl
import subprocess
import tarfile
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grft_core.data import loading as data
from grft_core.data.loading import LabeledData, load_dataset, load_train_val, stratified_split
from grft_core.errors import DatasetRejected

COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "eel": (0, 255, 0)}


def png_bytes(color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i:02d}.png").write_bytes(png_bytes(COLORS.get(name, (9, 9, 9))))
    return root


def write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rejected(uri: str, **kwargs: object) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        load_dataset(uri, **kwargs)  # type: ignore[arg-type]
    return info.value


TEXT_ROWS = [["good film", "pos"], ["bad film", "neg"], ["great", "pos"], ["awful", "neg"]]


class TestLabeledData:
    def test_subset_keeps_classes_and_source(self):
        full = LabeledData("text", ["a", "b", "c"], [0, 1, 0], ["x", "y"], "mem")
        part = full.subset([2, 0])
        assert (part.items, part.labels, part.classes, part.source) == (["c", "a"], [0, 0], ["x", "y"], "mem")
        assert len(part) == 2
        assert len(full) == 3


class TestImageFolder:
    def test_directory(self, tmp_path):
        root = image_folder(tmp_path / "pets", {"dog": 2, "cat": 3})
        loaded = load_dataset(str(root))
        assert loaded.modality == "image"
        assert loaded.classes == ["cat", "dog"]
        assert Counter(loaded.labels) == {0: 3, 1: 2}
        assert loaded.source == str(root)
        for image, label in zip(loaded.items, loaded.labels, strict=True):
            assert isinstance(image, Image.Image)
            assert image.mode == "RGB"
            assert image.getpixel((0, 0)) == COLORS[loaded.classes[label]]

    def test_file_uri_and_ignored_entries(self, tmp_path):
        root = image_folder(tmp_path / "pets", {"cat": 1, "dog": 1})
        (root / "README.txt").write_text("about this data")
        (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
        (root / "__MACOSX").mkdir()
        loaded = load_dataset(root.as_uri())
        assert loaded.classes == ["cat", "dog"]
        assert len(loaded) == 2

    def test_integer_class_names_sort_numerically(self, tmp_path):
        root = image_folder(tmp_path / "nums", {"10": 1, "2": 1, "1": 1})
        assert load_dataset(str(root)).classes == ["1", "2", "10"]

    @pytest.mark.parametrize("wrapped", [False, True])
    def test_zip(self, tmp_path, wrapped):
        root = image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
        archive = tmp_path / "pets.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(root.rglob("*.png")):
                bundle.write(path, path.relative_to(tmp_path if wrapped else root).as_posix())
        loaded = load_dataset(str(archive))
        assert loaded.classes == ["cat", "dog"]
        assert len(loaded) == 4

    @pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
    def test_tar(self, tmp_path, suffix):
        root = image_folder(tmp_path / "pets", {"cat": 2, "dog": 1, "eel": 1})
        archive = tmp_path / f"pets{suffix}"
        with tarfile.open(archive, "w:gz" if suffix != ".tar" else "w") as bundle:
            bundle.add(root, arcname="pets")
        loaded = load_dataset(str(archive))
        assert loaded.classes == ["cat", "dog", "eel"]
        assert Counter(loaded.labels) == {0: 2, 1: 1, 2: 1}

    def test_palette_transparency_loads_without_warning(self, tmp_path):
        root = image_folder(tmp_path / "pets", {"cat": 1, "dog": 1})
        palette = Image.new("P", (4, 4), 0)
        palette.putpalette([10, 20, 30] * 256)
        palette.info["transparency"] = 0
        palette.save(root / "cat" / "p.png", transparency=0)
        assert len(load_dataset(str(root))) == 3

    def test_non_image_file_rejected(self, tmp_path):
        root = image_folder(tmp_path / "pets", {"cat": 1, "dog": 1})
        (root / "dog" / "notes.txt").write_text("hi")
        error = rejected(str(root))
        assert "not an image" in error.message
        assert error.param == "dog/notes.txt"

    def test_corrupt_image_named(self, tmp_path):
        root = image_folder(tmp_path / "pets", {"cat": 1, "dog": 1})
        (root / "cat" / "broken.png").write_bytes(png_bytes()[:20])
        error = rejected(str(root))
        assert "cannot read image cat/broken.png" in error.message
        assert error.param == "cat/broken.png"

    @pytest.mark.parametrize("side", [40, 100])
    def test_decompression_bomb_rejected(self, tmp_path, monkeypatch, side):
        # 1,600 pixels sits between the limit and twice it (Pillow's warning), 10,000 is past twice it.
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        root = image_folder(tmp_path / "pets", {"cat": 1, "dog": 1})
        (root / "dog" / "huge.png").write_bytes(png_bytes(size=(side, side)))
        error = rejected(str(root))
        assert "decompression bomb" in error.message
        assert error.param == "dog/huge.png"

    def test_one_class_rejected(self, tmp_path):
        error = rejected(str(image_folder(tmp_path / "pets", {"cat": 3})))
        assert "needs at least 2 classes" in error.message
        assert error.param == "label"

    def test_empty_folder_rejected(self, tmp_path):
        (tmp_path / "empty").mkdir()
        error = rejected(str(tmp_path / "empty"))
        assert "empty" in error.message
        assert error.param == str(tmp_path / "empty")

    def test_folder_without_class_folders_rejected(self, tmp_path):
        (tmp_path / "flat").mkdir()
        (tmp_path / "flat" / "a.png").write_bytes(png_bytes())
        error = rejected(str(tmp_path / "flat"))
        assert "no class sub-folders" in error.message
        assert error.param == str(tmp_path / "flat")

    def test_one_class_archive_names_the_archive(self, tmp_path):
        archive = tmp_path / "one.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("cat/a.png", png_bytes())
        error = rejected(str(archive))
        assert error.message.startswith(f"{archive} needs at least 2 classes")


class TestArchiveSafety:
    @pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "cat/../../evil.png"])
    def test_zip_slip_rejected(self, tmp_path, member):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("cat/a.png", png_bytes())
            bundle.writestr(member, png_bytes())
        error = rejected(str(archive))
        assert "escapes the dataset folder" in error.message
        assert error.param == member
        assert not (tmp_path / "evil.png").exists()

    def test_tar_dotdot_rejected(self, tmp_path):
        archive = tmp_path / "bad.tar.gz"
        payload = png_bytes()
        with tarfile.open(archive, "w:gz") as bundle:
            info = tarfile.TarInfo("../evil.png")
            info.size = len(payload)
            bundle.addfile(info, io.BytesIO(payload))
        error = rejected(str(archive))
        assert "escapes the dataset folder" in error.message
        assert error.param == "../evil.png"
        assert not (tmp_path / "evil.png").exists()

    def test_tar_symlink_outside_rejected(self, tmp_path):
        archive = tmp_path / "link.tar"
        with tarfile.open(archive, "w") as bundle:
            info = tarfile.TarInfo("cat/passwd.png")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            bundle.addfile(info)
        error = rejected(str(archive))
        assert "escapes the dataset folder" in error.message
        assert error.param == "cat/passwd.png"

    @pytest.mark.parametrize("name", ["junk.zip", "junk.tar.gz"])
    def test_corrupt_archive_rejected(self, tmp_path, name):
        (tmp_path / name).write_bytes(b"this is not an archive at all")
        error = rejected(str(tmp_path / name))
        assert "not a readable" in error.message
        assert error.param == str(tmp_path / name)

    def test_size_limit(self, tmp_path, monkeypatch):
        root = image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
        archive = shutil.make_archive(str(tmp_path / "pets"), "zip", root)
        monkeypatch.setattr(data, "MAX_DATASET_BYTES", 100)
        assert "more than the limit" in rejected(archive).message


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


class TestTableErrors:
    def test_missing_label_column(self, tmp_path):
        error = rejected(str(write_csv(tmp_path / "t.csv", [["a", "b"]], header=("text", "tag"))))
        assert "no `label` column" in error.message
        assert "tag" in error.message
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


class TestFileErrors:
    def test_missing_file(self, tmp_path):
        error = rejected(str(tmp_path / "nope.csv"))
        assert "not found" in error.message
        assert error.param == str(tmp_path / "nope.csv")

    def test_empty_file(self, tmp_path):
        (tmp_path / "e.csv").write_bytes(b"")
        error = rejected(str(tmp_path / "e.csv"))
        assert "empty" in error.message
        assert error.param == str(tmp_path / "e.csv")

    def test_unknown_extension(self, tmp_path):
        (tmp_path / "d.xlsx").write_bytes(b"x")
        error = rejected(str(tmp_path / "d.xlsx"))
        assert "unknown dataset format" in error.message
        assert error.param == str(tmp_path / "d.xlsx")

    def test_unreachable_s3_endpoint(self, monkeypatch):
        # A closed loopback port as the endpoint: the s3 backend's own error must come back as a
        # DatasetRejected naming the URI (no credential lookups leave the machine).
        import fsspec.config

        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setitem(
            fsspec.config.conf,
            "s3",
            {
                "endpoint_url": "http://127.0.0.1:9",
                "key": "test",
                "secret": "test",
                "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
            },
        )
        error = rejected("s3://bucket/train.csv")
        assert "cannot download s3://bucket/train.csv" in error.message or "not found" in error.message
        assert error.param == "s3://bucket/train.csv"

    def test_unknown_scheme(self):
        assert "unsupported URI scheme" in rejected("nosuchproto://x/y.csv").message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(
    root: Path, context: ssl.SSLContext | None = None
) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server, thread = _serve(root)
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class TestRemote:
    def test_http_csv_and_zip(self, http_root, tmp_path):
        root, base = http_root
        write_csv(root / "t.csv", TEXT_ROWS)
        shutil.make_archive(str(root / "pets"), "zip", image_folder(tmp_path / "pets", {"cat": 1, "dog": 2}))
        text = load_dataset(f"{base}/t.csv?token=abc")
        assert text.classes == ["neg", "pos"]
        assert text.source == f"{base}/t.csv?token=abc"
        assert Counter(load_dataset(f"{base}/pets.zip").labels) == {0: 1, 1: 2}

    def test_http_not_found_and_redirect(self, http_root):
        root, base = http_root
        (root / "folder").mkdir()
        error = rejected(f"{base}/missing.csv")
        assert "not found" in error.message
        assert error.param == f"{base}/missing.csv"
        # The server answers a folder without its trailing slash with a 301, which is refused.
        assert "HTTP 301" in rejected(f"{base}/folder").message

    def test_http_size_limit(self, http_root, monkeypatch):
        root, base = http_root
        write_csv(root / "t.csv", TEXT_ROWS * 10)
        monkeypatch.setattr(data, "MAX_DATASET_BYTES", 64)
        assert "more than the limit" in rejected(f"{base}/t.csv").message

    def test_https(self, tmp_path, monkeypatch):
        if shutil.which("openssl") is None:
            pytest.fail("the https test needs the openssl command to make a certificate")
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        subprocess.run(
            [*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60
        )
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        root = tmp_path / "www"
        root.mkdir()
        write_csv(root / "t.csv", TEXT_ROWS)
        server, thread = _serve(root, context)
        try:
            loaded = load_dataset(f"https://127.0.0.1:{server.server_address[1]}/t.csv")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        assert loaded.items == [row[0] for row in TEXT_ROWS]

    def test_fsspec_memory_folder_and_file(self, tmp_path):
        fs = fsspec.filesystem("memory")
        try:
            for name in ("cat", "dog"):
                for i in range(2):
                    fs.pipe(f"/grft-test/pets/{name}/{i}.png", png_bytes(COLORS[name]))
            fs.pipe("/grft-test/t.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
            loaded = load_dataset("memory://grft-test/pets")
            assert loaded.classes == ["cat", "dog"]
            assert len(loaded) == 4
            assert load_dataset("memory://grft-test/t.jsonl").items == ["a", "b"]
            assert "not found" in rejected("memory://grft-test/none.csv").message
        finally:
            fs.rm("/grft-test", recursive=True)


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
