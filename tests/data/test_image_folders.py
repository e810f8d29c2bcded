"""Image datasets: class folders on disk or as file:// URIs, and the same folders inside zip and tar
archives; unreadable, unsafe and one-class folders are rejected with the file named."""

from __future__ import annotations

import tarfile
import zipfile
from collections import Counter

import pytest
from PIL import Image

from grft_core.data.loading import load_dataset
from tests.data.helpers import COLORS, image_folder, png_bytes, rejected


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
