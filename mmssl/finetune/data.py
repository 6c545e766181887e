"""Labelled manifests: reading the usable rows, encoding the labels and holding out a validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmssl.data.dataset import is_missing
from mmssl.data.labels import LabelError, parse_label_column
from mmssl.data.sources import ManifestOptions, load_manifest
from mmssl.finetune.config import FinetuneError


@dataclass
class LabelledRows:
    """The usable rows of a manifest: modality values, raw labels and their row numbers (0-based)."""

    path: Path
    values: list[Any]
    labels: list[Any]
    rows: list[int]
    column_kind: str
    skipped: int = 0


@dataclass
class Targets:
    """Encoded labels: class indices (classification) or floats (regression)."""

    train: Tensor
    test: Tensor
    classes: list[Any] | None = None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a long text is not a valid file name (ENAMETOOLONG)
        return False


def _looks_like_files(values: list[Any], folder: Path) -> bool:
    sample = values[:20]
    return bool(sample) and all(
        isinstance(v, str | Path) and len(str(v)) < 4096 and _is_file(folder / str(v)) for v in sample
    )


def read_labelled(path: Path, column: str, label: str, column_kind: str = "auto", modality: str = "") -> LabelledRows:
    """Rows of a manifest (any file the ``manifest`` source reads) with a value in ``column`` and a ``label``.

    ``column_kind`` ``file`` resolves the column's values as paths relative to the manifest's folder, ``value``
    keeps them as they are, ``auto`` picks ``file`` when the first values name existing files.
    """
    path = Path(path).resolve()
    try:
        source = load_manifest(ManifestOptions(path=str(path)), path.parent)
    except FileNotFoundError as err:
        raise FinetuneError(str(err)) from None
    columns = list(source.columns)
    for row in source.rows:
        columns.extend(c for c in row if c not in columns)
    if not source.rows:
        raise FinetuneError(f"{path}: the manifest has no rows")
    if label not in columns:
        raise FinetuneError(f"{path}: label column {label!r} not found; columns are {columns} (set --label)")
    if column not in columns:
        raise FinetuneError(
            f"{path}: column {column!r} of modality {modality!r} not found; columns are {columns} (set --column)"
        )
    present = [row.get(column) for row in source.rows if not is_missing(row.get(column))]
    if column_kind == "auto":
        column_kind = "file" if _looks_like_files(present, path.parent) else "value"
    if column_kind == "file":
        source = load_manifest(ManifestOptions(path=str(path), path_columns=[column]), path.parent)
    values, labels, rows = [], [], []
    for i, row in enumerate(source.rows):
        value, target = row.get(column), row.get(label)
        if is_missing(value) or is_missing(target):
            continue
        values.append(value)
        labels.append(target)
        rows.append(i)
    if not values:
        raise FinetuneError(f"{path}: no row has both column {column!r} and label {label!r}")
    return LabelledRows(path, values, labels, rows, column_kind, len(source.rows) - len(values))


def encode_labels(
    train: LabelledRows, test: LabelledRows, label: str, task: str, run_classes: list[str] | None = None
) -> Targets:
    """Class indices over the sorted classes of the training manifest, or float targets.

    With ``run_classes`` (the class names of the encoder's run) and name labels all among them, the classes are
    the run's, in its order, so the head's class ``i`` is the run's class ``i``.

    Raises:
        FinetuneError: One class only, test classes unseen in training, regression labels that are not numbers,
            or class labels mixing names and integers or holding a non-integer number (file, row and value named).
    """
    if task == "regression":

        def numbers(data: LabelledRows) -> Tensor:
            out = []
            for row, value in zip(data.rows, data.labels, strict=True):
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if isinstance(value, bool) or not math.isfinite(number):
                    raise FinetuneError(
                        f"{data.path}: regression label column {label!r} holds a value that is not a finite number "
                        f"(row {row + 1}: {value!r})"
                    )
                out.append(number)
            return torch.tensor(out, dtype=torch.float64)

        return Targets(numbers(train), numbers(test))
    where = [f"{train.path} row {r + 1}" for r in train.rows] + [f"{test.path} row {r + 1}" for r in test.rows]
    try:
        keys, _ = parse_label_column(train.labels + test.labels, where.__getitem__)
    except LabelError as err:
        raise FinetuneError(str(err)) from None
    train_keys, test_keys = keys[: len(train.labels)], keys[len(train.labels) :]
    classes = sorted(set(train_keys))
    if run_classes and all(isinstance(k, str) and k in run_classes for k in train_keys + test_keys):
        classes = list(run_classes)
    if len(classes) < 2:
        raise FinetuneError(
            f"{train.path}: label column {label!r} has one class ({classes[0]!r}); classification needs at least "
            "two (use --task regression for numeric targets)"
        )
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted({str(k) for k in test_keys if k not in index})
    if unseen:
        raise FinetuneError(
            f"{test.path}: label column {label!r} has classes not in the training manifest {train.path}: "
            f"{unseen[:10]}{' ...' if len(unseen) > 10 else ''}"
        )
    return Targets(torch.tensor([index[k] for k in train_keys]), torch.tensor([index[k] for k in test_keys]), classes)


def validation_split(targets: Tensor, fraction: float, stratify: bool, seed: int) -> tuple[Tensor, Tensor]:
    """``(train indices, validation indices)``, sorted; per class when ``stratify``. Empty validation at 0."""
    n = len(targets)
    if fraction <= 0 or n < 2:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    rng = np.random.default_rng(seed)
    y = targets.numpy()
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(n)]
    val: list[int] = []
    for idx in groups:
        take = min(int(round(fraction * len(idx))), len(idx) - 1)
        val.extend(rng.permutation(idx)[:take].tolist())
    if not val:  # too few rows for the fraction: hold out one row of the largest group
        largest = max(groups, key=len)
        val = [int(rng.choice(largest))]
    held = np.zeros(n, dtype=bool)
    held[val] = True
    return torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))
