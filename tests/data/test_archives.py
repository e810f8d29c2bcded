"""Archive safety: members that escape the dataset folder, corrupt archives and oversized archives are
rejected before anything is written outside a temporary folder."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile

import pytest

from grft_core.data import fetch
from tests.data.helpers import image_folder, png_bytes, rejected


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
        monkeypatch.setattr(fetch, "MAX_DATASET_BYTES", 100)
        assert "more than the limit" in rejected(archive).message
