"""Cooperative cancel in the library: ``should_stop`` is asked while loading (records, archive members,
download chunks), encoding, the selection pass and training, and the first True stops the work.

Every test counts calls; none sleeps or times anything.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import tarfile
import threading
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from grft_core.cancel import check_stop, stop_checks
from grft_core.data.loading import load_dataset, load_train_val
from grft_core.errors import TrainingInterrupted
from grft_core.method.batching import BatchSource
from grft_core.method.config import GRFTConfig
from grft_core.method.setup import compute_selection
from grft_core.pipeline import train_to_folder
from tests.conftest import make_texts, stack_names

LABELS = ["sport", "business", "arts"]


class StopAfter:
    """A ``should_stop`` that says True on call ``n + 1`` and records where each call came from."""

    def __init__(self, n: float) -> None:
        self.n, self.calls = n, 0
        self.stopped_in: set[str] = set()

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls > self.n:
            self.stopped_in = stack_names()
            return True
        return False


def raised_in(info: pytest.ExceptionInfo[TrainingInterrupted]) -> set[str]:
    return {frame.name for frame in traceback.extract_tb(info.value.__traceback__)}


def write_csv(path: Path, rows: int) -> Path:
    items, labels = make_texts(rows, 3)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((item, LABELS[label]) for item, label in zip(items, labels, strict=True))
    return path


def png_bytes(colour: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (colour, 0, 0)).save(out, "PNG")
    return out.getvalue()


class TestStopChecks:
    def test_no_check_installed_is_a_no_op(self) -> None:
        check_stop()  # nothing installed: nothing happens

    def test_nested_checks_are_both_asked(self) -> None:
        outer, inner = StopAfter(float("inf")), StopAfter(0)
        with stop_checks(outer), stop_checks(inner), pytest.raises(TrainingInterrupted):
            check_stop()
        assert (outer.calls, inner.calls) == (1, 1)
        check_stop()  # uninstalled on the way out

    def test_the_same_check_twice_is_asked_once(self) -> None:
        stop = StopAfter(float("inf"))
        with stop_checks(stop), stop_checks(stop), stop_checks(None):
            check_stop()
        assert stop.calls == 1


class TestLoading:
    @pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
    def test_a_table_is_checked_per_record(self, tmp_path: Path, suffix: str) -> None:
        path = write_csv(tmp_path / "news.csv", 2000)
        if suffix == ".jsonl":
            with path.open() as handle:
                rows = list(csv.DictReader(handle))
            path = tmp_path / "news.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        counted = StopAfter(float("inf"))
        assert len(load_dataset(str(path), should_stop=counted)) == 2000
        assert counted.calls >= 2000  # at least once per record

        stop = StopAfter(50)
        with pytest.raises(TrainingInterrupted):
            load_dataset(str(path), should_stop=stop)
        assert stop.calls == 51  # the first True stops it: nothing more is read
        reader = "_csv_rows" if suffix == ".csv" else "_jsonl_rows"
        assert reader in stop.stopped_in

    def test_zip_extraction_is_checked_per_member(self, tmp_path: Path) -> None:
        archive = tmp_path / "digits.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for i in range(60):
                bundle.writestr(f"digits/{i % 3}/{i}.png", png_bytes(i))
        stop = StopAfter(5)
        with pytest.raises(TrainingInterrupted) as info:
            load_dataset(str(archive), should_stop=stop)
        assert stop.calls == 6
        assert "_extract_zip" in raised_in(info)
        extracted = list(tmp_path.rglob("*.png"))
        assert extracted == []  # the temporary folder is gone with what was extracted

    def test_tar_extraction_is_checked_per_member(self, tmp_path: Path) -> None:
        archive = tmp_path / "digits.tar.gz"
        with tarfile.open(archive, "w:gz") as bundle:
            for i in range(60):
                data = png_bytes(i)
                member = tarfile.TarInfo(f"digits/{i % 3}/{i}.png")
                member.size = len(data)
                bundle.addfile(member, io.BytesIO(data))
        stop = StopAfter(5)
        with pytest.raises(TrainingInterrupted):
            load_dataset(str(archive), should_stop=stop)
        assert stop.calls == 6
        assert "within_budget" in stop.stopped_in

    def test_image_decoding_is_checked_per_image(self, tmp_path: Path) -> None:
        for i in range(30):
            folder = tmp_path / "digits" / str(i % 3)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(png_bytes(i))
        counted = StopAfter(float("inf"))
        load_dataset(str(tmp_path / "digits"), should_stop=counted)
        listing = 30 + 1  # one per file found, one on entry
        stop = StopAfter(listing + 3)
        with pytest.raises(TrainingInterrupted):
            load_dataset(str(tmp_path / "digits"), should_stop=stop)
        assert "_to_labeled" in stop.stopped_in  # stopped among the decodes, after 3 images
        assert counted.calls == listing + 30

    def test_validation_data_is_not_read_after_a_stop(self, tmp_path: Path) -> None:
        train = write_csv(tmp_path / "train.csv", 300)
        val = write_csv(tmp_path / "val.csv", 300)
        stop = StopAfter(100)
        with pytest.raises(TrainingInterrupted):
            load_train_val(str(train), str(val), should_stop=stop)
        assert stop.calls == 101


@pytest.fixture
def http_file(tmp_path: Path) -> Iterator[Callable[[bytes, str], str]]:
    """Serves bytes over plain http on 127.0.0.1 (the library's http:// path) and returns the URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(body: bytes, name: str) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 64 * 1024):
                        self.wfile.write(body[start : start + 64 * 1024])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what the test wants

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class TestDownload:
    def test_a_download_is_checked_per_chunk(self, http_file: Callable[[bytes, str], str]) -> None:
        url = http_file(b"text,label\n" + b"x" * (16 * 1024 * 1024), "big.csv")
        stop = StopAfter(3)
        with pytest.raises(TrainingInterrupted) as info:
            load_dataset(url, should_stop=stop)
        assert stop.calls == 4  # on entry, then per received chunk: 16 MiB never all arrived
        assert "_fetch" in raised_in(info)


@pytest.fixture
def text_source(registry: Any) -> tuple[Any, BatchSource]:
    from grft_core.data.preprocess import make_preprocessor

    model, spec = registry.load("tiny-bert", num_labels=3, seed=0)
    items, labels = make_texts(96, 3)
    preprocessor = make_preprocessor(spec, max_length=16)
    return model, BatchSource(items, labels, preprocessor, torch.device("cpu"))


class TestSelectionPass:
    @pytest.mark.parametrize("loss", ["scl", "ce"])
    def test_checked_per_batch(self, text_source: tuple[Any, BatchSource], loss: str) -> None:
        model, source = text_source
        config = GRFTConfig(k=2, selection_samples=96, selection_batch_size=8, selection_loss=loss)
        forwards = 0

        def count(*_: Any) -> None:
            nonlocal forwards
            forwards += 1

        hook = model.backbone.register_forward_hook(count)  # once per view per batch
        try:
            stop = StopAfter(float("inf"))
            compute_selection(model, source, config, should_stop=stop)
            per_batch = stop.calls / 12  # 96 samples in batches of 8
            full_pass = forwards
            forwards = 0
            stop = StopAfter(int(3 * per_batch))
            with pytest.raises(TrainingInterrupted):
                compute_selection(model, source, config, should_stop=stop)
        finally:
            hook.remove()
        assert per_batch >= 1
        assert "loss_fn" in stop.stopped_in
        assert forwards == full_pass * 3 // 12  # three batches of twelve ran, no more


class TestTrainToFolder:
    CONFIG = GRFTConfig(
        k=2, epochs=1, batch_size=8, selection_samples=16, selection_batch_size=8, max_length=16
    )

    def test_every_phase_asks(self, registry: Any, tmp_path: Path) -> None:
        data = write_csv(tmp_path / "news.csv", 48)
        phases: list[set[str]] = []

        def never() -> bool:
            phases.append(stack_names())
            return False

        train_to_folder(
            "tiny-bert", str(data), tmp_path / "adapter", self.CONFIG, registry=registry, should_stop=never
        )
        seen = set().union(*phases)
        for phase in ("_csv_rows", "compute_selection", "evaluate", "fit"):
            assert phase in seen
        steps = [p for p in phases if "fit" in p and not {"compute_selection", "evaluate"} & p]
        assert len(steps) >= 5  # 40 training items in batches of 8: each training batch asks

    @pytest.mark.parametrize("phase", ["_csv_rows", "compute_selection", "evaluate", "epoch"])
    def test_stops_in_the_phase_it_is_asked_in(self, registry: Any, tmp_path: Path, phase: str) -> None:
        data = write_csv(tmp_path / "news.csv", 48)
        calls_after = 0
        asked = False

        def stop_in_phase() -> bool:
            nonlocal calls_after, asked
            if asked:
                calls_after += 1
            asked = asked or phase in stack_names()
            return asked

        out = tmp_path / "adapter"
        with pytest.raises(TrainingInterrupted):
            train_to_folder(
                "tiny-bert", str(data), out, self.CONFIG, registry=registry, should_stop=stop_in_phase
            )
        assert asked
        assert calls_after == 0  # the first True was the last question
        assert not out.exists()
