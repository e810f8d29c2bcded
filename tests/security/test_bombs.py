"""Attack inputs of issue 10 against the real code paths, each in a fresh process: the clear error that
names the limit, and a ceiling on the process's peak RSS over a baseline doing the same imports.

The probes are bench/attack_memory.py's (which also measures them with the limits lifted).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from bench import attack_memory as attack
from grft_core.data import DataLimits, decode_image, load_dataset
from grft_core.data import archives as data_archives
from grft_core.errors import DatasetRejected

CEILING_MB = 300  # the unbounded runs cost 0.9-3 GB (bench/RESULTS.md)


@pytest.fixture(scope="module")
def baselines() -> dict[str, float]:
    return {}


def over_baseline(baselines: dict[str, float], kind: str, probe: attack.Probe) -> float:
    if kind not in baselines:
        baselines[kind] = attack.baseline(kind).peak_mb
    return probe.peak_mb - baselines[kind]


class TestPixelBomb:
    def test_predict_request_is_refused_from_the_header(self, tmp_path: Path, baselines) -> None:
        probe = attack.predict_pixel_bomb(tmp_path, limited=True)
        assert probe.outcome.startswith("422 image inputs[0].image is 9400x9400")
        assert "over the limit of 25,000,000 pixels per image (max_image_pixels)" in probe.outcome
        assert over_baseline(baselines, "api", probe) < CEILING_MB

    def test_training_zip_is_refused_from_the_header(self, tmp_path: Path, baselines) -> None:
        probe = attack.training_pixel_bomb(tmp_path, limited=True)
        assert "9400x9400" in probe.outcome
        assert "(max_image_pixels)" in probe.outcome
        assert over_baseline(baselines, "data", probe) < CEILING_MB

    def test_image_is_decoded_toward_the_size_asked_for(self) -> None:
        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (2000, 1500), (200, 10, 10)).save(out, "JPEG")
        jpeg = decode_image(out.getvalue(), "x", reduce_to=224)
        assert jpeg.size == (500, 375)  # JPEG draft: 1/4 while decoding, both sides still >= 224
        out = io.BytesIO()
        Image.new("RGB", (2000, 1500), (200, 10, 10)).save(out, "PNG")
        png = decode_image(out.getvalue(), "x", reduce_to=224)
        assert png.size == (334, 250)  # reduced by 6 after decoding
        assert png.getpixel((10, 10)) == (200, 10, 10)


class TestArchiveBomb:
    def test_declared_size_over_the_budget_is_refused_before_writing(self, tmp_path: Path, baselines) -> None:
        # 96 MiB of zeros in a ~100 KB zip against a 32 MiB budget (the default is 1 GiB).
        probe = attack.archive_bomb(tmp_path, limited=True, size=96 << 20, budget=32 << 20)
        assert probe.outcome.startswith("422 ")
        assert probe.outcome.endswith(
            "zeros.zip expands to more than the limit of 33,554,432 bytes (max_extract_bytes)"
        )
        assert (tmp_path / "zeros.zip").stat().st_size < 1 << 20
        assert over_baseline(baselines, "data", probe) < CEILING_MB

    def test_tar_is_cut_while_streaming(self, tmp_path: Path) -> None:
        archive = attack.zero_tar(tmp_path, members=8, size=8 << 20)  # 64 MiB in, 64 KiB compressed
        target = tmp_path / "out"
        target.mkdir()
        with pytest.raises(DatasetRejected, match=r"max_extract_bytes"):
            data_archives._extract_tar(archive, target, "zeros.tar.gz", 20 << 20)
        written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        assert 0 < written <= 20 << 20  # two members made it, the third was refused before its bytes

    def test_zip_whose_header_lies_never_writes_past_the_budget(self, tmp_path: Path, monkeypatch) -> None:
        archive = attack.zero_zip(tmp_path, 16 << 20)
        real = zipfile.ZipFile.infolist

        def understated(self: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
            infos = real(self)
            for info in infos:
                info.file_size = min(info.file_size, 1024)  # what a forged header would claim
            return infos

        monkeypatch.setattr(zipfile.ZipFile, "infolist", understated)
        target = tmp_path / "out"
        target.mkdir()
        with pytest.raises(DatasetRejected, match=r"max_extract_bytes|not a readable zip"):
            data_archives._extract_zip(archive, target, "zeros.zip", 4 << 20)
        assert sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) <= 4 << 20


class TestCsvLineBomb:
    def test_long_line_is_refused_before_it_is_read(self, tmp_path: Path, baselines) -> None:
        probe = attack.training_long_line(tmp_path, limited=True)
        assert probe.outcome == (
            "422 long.csv: the record on line 3 is over the limit of 8,388,608 bytes per record "
            "(max_record_bytes)"
        )
        assert over_baseline(baselines, "data", probe) < CEILING_MB

    def test_jsonl_line_and_long_text_name_their_limits(self, tmp_path: Path) -> None:
        path = tmp_path / "t.jsonl"
        path.write_text('{"text": "ok", "label": 1}\n{"text": "' + "x" * 5000 + '", "label": 2}\n')
        with pytest.raises(DatasetRejected) as caught:
            load_dataset(str(path), limits=DataLimits(max_record_bytes=4096))
        assert caught.value.param == "line 2"
        assert "(max_record_bytes)" in caught.value.message
        with pytest.raises(DatasetRejected) as caught:
            load_dataset(str(path), limits=DataLimits(max_text_chars=1000))
        assert caught.value.param == "line 2"
        assert "5,000 characters, over the limit of 1,000 per text (max_text_chars)" in caught.value.message


class TestTextBomb:
    def test_predict_text_is_refused_naming_the_limit(self, baselines) -> None:
        probe = attack.predict_text_bomb(limited=True)
        assert probe.outcome == (
            "413 inputs[0].text: 4,194,304 characters, over the 100,000-character limit per text "
            "(GRFT_MAX_TEXT_CHARS)"
        )
        assert over_baseline(baselines, "api", probe) < CEILING_MB

    def test_text_at_the_limit_is_cut_before_tokenizing_with_the_same_tokens(
        self, registry, baselines
    ) -> None:
        from grft_core.data import make_preprocessor

        prep = make_preprocessor(registry.get("all-minilm-l6-v2"), max_length=32)
        text = "the quick brown fox jumps over the lazy dog " * 2300  # 101,200 characters
        cut = prep.usable_text(text)
        assert len(cut) < 32 * 16 < len(text)
        full = prep.tokenizer([text], truncation=True, max_length=32, return_tensors="pt")
        assert prep([text])["input_ids"].tolist() == full["input_ids"].tolist()


class TestJsonBody:
    def test_big_body_without_a_key_is_413_after_the_first_mebibyte(self, baselines) -> None:
        probe = attack.json_body_bomb(limited=True)
        assert probe.outcome.startswith("[413, ")
        assert '"code": "payload_too_large"' in probe.outcome
        assert "1,048,576-byte limit for JSON requests (GRFT_MAX_JSON_BODY_BYTES)" in probe.outcome
        assert probe.outcome.endswith("after 1 MiB read")
        assert probe.seconds < 5
        assert over_baseline(baselines, "api", probe) < CEILING_MB
