"""Turning source rows into per-modality views and collating them into a ``Batch``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmssl.batch import CLEAN, LOCAL_PREFIX, Batch
from mmssl.data.errors import MAX_ATTEMPTS, OnError, SkippedRow, replacement_row
from mmssl.data.sources import Source
from mmssl.modality import ModalityBatch, Processor


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and value == "")


class ViewDataset:
    """Map-style dataset yielding decoded views of rows.

    Items are addressed by ``(row_index, epoch)``; the random views of a row come from a generator seeded with
    ``(seed, epoch, row_index)``, so they do not depend on worker processes or on where a run was resumed. Under
    ``on_error="skip"`` a row that cannot be decoded is replaced by ``replacement_row`` and reported in the item's
    ``skipped`` list (it travels with the batch, so counts from worker processes reach the training loop).

    Args:
        source: The rows.
        columns: modality -> column of the source holding its raw value.
        processors: modality -> fitted processor.
        views: modality -> view names needed (``"clean"``, ``"view0"``, ...).
        seed: Run seed.
        on_error: ``raise`` (stop at the first unreadable row) or ``skip``.
    """

    def __init__(
        self,
        source: Source,
        columns: dict[str, str],
        processors: dict[str, Processor],
        views: dict[str, list[str]],
        seed: int = 0,
        on_error: OnError = "raise",
    ) -> None:
        self.source, self.columns, self.processors, self.views, self.seed = source, columns, processors, views, seed
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        skipped: list[SkippedRow] = []
        row_index, rng = index, np.random.default_rng([self.seed, epoch, index])
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                item = self._item(row_index, rng)
            except _Unreadable as err:
                if self.on_error != "skip":
                    raise ValueError(f"{err} (data.on_error: skip trains past unreadable rows)") from err.__cause__
                skipped.append(err.skipped)
                row_index, rng = replacement_row(self.seed, epoch, index, attempt, len(self.source))
                continue
            item["skipped"] = skipped
            return item
        raise ValueError(
            f"data.on_error: skip found no readable row for row {index} of {self.source.origin} in {MAX_ATTEMPTS} "
            f"tries; the last error: {skipped[-1].error}"
        )

    def _item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        try:
            return row_views(self.source[index], index, rng, self.columns, self.processors, self.views)
        except RowDecodeError as err:
            origin = self.source.origin
            skipped = SkippedRow.of(0, index, origin, err.column, err.raw, err.__cause__ or err)
            raise _Unreadable(f"{origin} row {index}, {err}", skipped) from err.__cause__


class RowDecodeError(ValueError):
    """A plugin could not decode a value of a row; the message names the column and the modality.

    Attributes:
        column: The column holding the value.
        raw: The value.
    """

    def __init__(self, message: str, column: str, raw: Any) -> None:
        super().__init__(message)
        self.column, self.raw = column, raw


def row_views(
    row: dict[str, Any],
    index: int,
    rng: np.random.Generator,
    columns: dict[str, str],
    processors: dict[str, Processor],
    views: dict[str, list[str]],
) -> dict[str, Any]:
    """Decode a row's modalities and make the views asked for (:func:`make_view`); random views draw from ``rng``.

    Raises:
        RowDecodeError: A plugin failed to decode a value (the original error is its ``__cause__``).
    """
    out: dict[str, Any] = {"index": index, "label": row.get("label", -1), "views": {}}
    for modality, names in views.items():
        raw = row.get(columns[modality])
        if is_missing(raw):
            continue
        processor = processors[modality]
        try:
            sample = processor.decode(raw)
        except Exception as err:
            raise RowDecodeError(f"column {columns[modality]!r} ({modality}): {err}", columns[modality], raw) from err
        out["views"][modality] = {name: make_view(processor, sample, name, rng) for name in names}
    return out


def make_view(processor: Processor, sample: Any, name: str, rng: np.random.Generator) -> Any:
    """The view ``name`` of a decoded sample: ``clean`` is ``prepare``; ``local0``, ``local1``, ... are the
    processor's small local crops (``augment_local``, DINO's multi-crop); any other name is a random ``augment``."""
    if name == CLEAN:
        return processor.prepare(sample)
    if name.startswith(LOCAL_PREFIX):
        return processor.augment_local(sample, rng)  # type: ignore[attr-defined]  # the local_views capability
    return processor.augment(sample, rng)


class _Unreadable(Exception):
    def __init__(self, message: str, skipped: SkippedRow) -> None:
        super().__init__(message)
        self.skipped = skipped


class Collator:
    """Collates ``ViewDataset`` items into a ``Batch`` with each plugin's own ``collate``."""

    def __init__(self, processors: dict[str, Processor], views: dict[str, list[str]]) -> None:
        self.processors, self.views = processors, views

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        inputs: dict[str, dict[str, ModalityBatch]] = {}
        present: dict[str, Tensor] = {}
        for modality, names in self.views.items():
            has = [modality in item["views"] for item in items]
            present[modality] = torch.tensor(has, dtype=torch.bool)
            rows = [item["views"][modality] for item in items if modality in item["views"]]
            if rows:
                collate = self.processors[modality].collate
                inputs[modality] = {name: collate([row[name] for row in rows]) for name in names}
        labels = torch.tensor([int(item["label"]) if item["label"] is not None else -1 for item in items])
        index = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return Batch(inputs, present, labels, index, [s for item in items for s in item.get("skipped", [])])
