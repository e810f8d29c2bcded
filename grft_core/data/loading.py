"""Labelled datasets: read any supported URI and format into :class:`LabeledData`, and split it.

A URI is a local path, a ``file://`` URL or any fsspec URL (``https://``, ``s3://``). Remote data is
copied into a temporary folder first (:mod:`grft_core.data.fetch`), archives are extracted there too
(:mod:`grft_core.data.archives`), the files are read by the format readers of
:mod:`grft_core.data.formats`, and every image kept is decoded into memory
(:func:`~grft_core.data.images.decode_image`), so nothing on disk is needed once loading returns.

Which URIs may be read at all is the caller's policy, not this module's (a service checks them before
calling). Error messages name the URI and the kind of failure, never text a remote server sent.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from grft_core.cancel import ShouldStop, check_stop, stop_checks
from grft_core.data import fetch
from grft_core.data.archives import ARCHIVE_SUFFIXES, archive_root, extract_archive
from grft_core.data.formats import (
    TABULAR_SUFFIXES,
    RawRecords,
    is_saved_dataset,
    is_visible,
    read_image_folder,
    read_saved_dataset,
    read_table,
    sort_classes,
)
from grft_core.data.images import decode_image
from grft_core.data.limits import DataLimits
from grft_core.errors import DatasetRejected

__all__ = ["LabeledData", "load_dataset", "load_train_val", "stratified_split"]


@dataclass
class LabeledData:
    """Labelled examples.

    ``items`` hold RGB :class:`PIL.Image.Image` objects, already loaded, when ``modality`` is
    ``"image"`` and strings when it is ``"text"``; ``labels[i]`` indexes ``classes``, the class names in
    sorted order; ``source`` is the URI the examples were read from.
    """

    modality: Literal["image", "text"]
    items: list[Any]
    labels: list[int]
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> LabeledData:
        """Return the examples at ``indices`` (in that order), keeping the classes and the source."""
        return replace(self, items=[self.items[i] for i in indices], labels=[self.labels[i] for i in indices])


def load_dataset(
    uri: str,
    *,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> LabeledData:
    """Load a labelled dataset from ``uri`` (a path, ``file://`` or fsspec URL).

    With ``max_items``, keep at most that many examples, taken in turn from each class so that a small
    cap still covers every class. ``limits`` (default :class:`DataLimits`) bound pixels per image,
    characters per text, bytes per record and what an archive may expand to. Returns the examples with
    images decoded to RGB. Raises :class:`DatasetRejected` for a missing or empty file, an unknown
    format, bad columns or rows, a corrupt image, anything over ``limits`` (the message names the
    limit), an archive member escaping its folder, a remote backend that is not installed, or fewer
    than 2 classes; :class:`ValueError` when ``max_items`` is below 1; :class:`TrainingInterrupted`
    when ``should_stop`` (asked per download chunk, archive member, record and decoded image; see
    :mod:`grft_core.cancel`) returns True.
    """
    limits = limits or DataLimits()
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    with (
        stop_checks(should_stop),
        tempfile.TemporaryDirectory(prefix="grft-data-", ignore_cleanup_errors=True) as work,
    ):
        check_stop()
        workdir = Path(work)
        local = fetch.local_copy(uri, workdir)
        records = _read_path(local, _display_name(uri, local), workdir, limits)
        return _to_labeled(records, uri, max_items, limits)


def stratified_split(data: LabeledData, val_fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """Split ``data`` into (train, val), holding out about ``val_fraction`` of each class.

    Every class with at least 2 examples gives at least 1 to val and keeps at least 1 in train; a class
    with a single example stays in train. The choice depends only on ``seed``; both parts keep the
    original order and all ``classes``. Raises :class:`ValueError` unless ``0 < val_fraction < 1``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(data.labels):
        by_class.setdefault(label, []).append(index)
    held_out: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, int(len(members) * val_fraction + 0.5)))
        held_out.update(rng.sample(members, count))
    train = [i for i in range(len(data)) if i not in held_out]
    return data.subset(train), data.subset(sorted(held_out))


def load_train_val(
    train_uri: str,
    val_uri: str | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
    limits: DataLimits | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[LabeledData, LabeledData]:
    """Load the training data and a validation set, from ``val_uri`` or split off ``train_uri``.

    With ``val_uri`` both are loaded (``max_items`` applies to each), must hold the same modality and
    label set, and the val labels are mapped onto the train classes; ``limits`` apply to each. Without
    it, a seeded :func:`stratified_split` holds out ``val_fraction``. Returns (train, val). Raises
    :class:`DatasetRejected` for anything :func:`load_dataset` rejects, label sets that differ, or a
    dataset too small to hold anything out; :class:`ValueError` for a bad ``val_fraction``;
    :class:`TrainingInterrupted` when ``should_stop`` returns True (see :func:`load_dataset`).
    """
    train = load_dataset(train_uri, max_items=max_items, limits=limits, should_stop=should_stop)
    if val_uri is None:
        train_part, val_part = stratified_split(train, val_fraction, seed)
        if len(val_part) == 0:
            raise DatasetRejected(
                f"{train_uri} is too small to hold out a validation split: every class has one example",
                param="val_fraction",
            )
        return train_part, val_part
    val = load_dataset(val_uri, max_items=max_items, limits=limits, should_stop=should_stop)
    if val.modality != train.modality:
        raise DatasetRejected(
            f"the training data holds {train.modality} but the validation data holds {val.modality}",
            param=val_uri,
        )
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    if only_train or only_val:
        raise DatasetRejected(
            "training and validation label sets differ: "
            f"only in training: {only_train or 'none'}; only in validation: {only_val or 'none'}",
            param="label",
        )
    position = {name: index for index, name in enumerate(train.classes)}
    remapped = [position[val.classes[label]] for label in val.labels]
    return train, replace(val, labels=remapped, classes=list(train.classes))


def _to_labeled(records: RawRecords, source: str, max_items: int | None, limits: DataLimits) -> LabeledData:
    keep: Sequence[int] = range(len(records.labels))
    if max_items is not None:
        order = {name: index for index, name in enumerate(sort_classes(records.labels))}
        keep = _round_robin([order[name] for name in records.labels], len(order), max_items)
    names = [records.labels[i] for i in keep]
    classes = sort_classes(names)
    if len(classes) < 2:
        raise DatasetRejected(
            # The count, not the names: with under 2 classes this may be no dataset at all.
            f"{records.name} needs at least 2 classes, found {len(classes)}",
            param="label",
        )
    position = {name: index for index, name in enumerate(classes)}
    items: list[Any] = []
    for i in keep:
        check_stop()
        item = records.items[i]
        if isinstance(item, str):
            items.append(item)
        else:
            where = records.where[i]
            what = f"{records.name} {where}" if records.by_row else where
            image = decode_image(
                item, what, where, max_pixels=limits.max_image_pixels, reduce_to=limits.image_side
            )
            items.append(image)
    return LabeledData(records.modality, items, [position[name] for name in names], classes, source)


def _round_robin(labels: list[int], class_count: int, max_items: int) -> list[int]:
    queues: list[list[int]] = [[] for _ in range(class_count)]
    for index, label in enumerate(labels):
        queues[label].append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(max_items, len(labels)):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_items:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen)


def _display_name(uri: str, local: Path) -> str:
    return local.name if "://" in uri else uri


def _read_path(path: Path, display: str, workdir: Path, limits: DataLimits) -> RawRecords:
    if not path.exists():
        raise DatasetRejected(f"dataset not found: {display}", param=display)
    if path.is_dir():
        return _read_dir(path, display, limits)
    if path.stat().st_size == 0:
        raise DatasetRejected(f"dataset file is empty: {display}", param=display)
    name = path.name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        target = workdir / "extracted"
        target.mkdir()
        # Read the constant at call time: it is the disk cap of every copy, downloads included.
        budget = min(fetch.MAX_DATASET_BYTES, limits.max_extract_bytes)
        extract_archive(path, target, display, budget)
        return _read_dir(archive_root(target), display, limits)
    kind = TABULAR_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DatasetRejected(
            f"unknown dataset format for {display}: expected a folder, .zip, .tar.gz, .tgz, .tar, "
            f"{', '.join(TABULAR_SUFFIXES)} or a save_to_disk folder",
            param=display,
        )
    return read_table(path, kind, limits)


def _read_dir(path: Path, display: str, limits: DataLimits) -> RawRecords:
    if is_saved_dataset(path):
        return read_saved_dataset(path, limits)
    visible = [p for p in path.iterdir() if is_visible(p)]
    if not visible:
        raise DatasetRejected(f"dataset folder is empty: {display}", param=display)
    tables = [p for p in visible if p.is_file() and p.suffix.lower() in TABULAR_SUFFIXES]
    if len(tables) == 1 and not any(p.is_dir() for p in visible):
        return read_table(tables[0], TABULAR_SUFFIXES[tables[0].suffix.lower()], limits)
    return read_image_folder(path, display)
