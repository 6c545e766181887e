"""UCR/UEA time-series classification archives as a data source (``source: ucr_uea``).

Loads through ``sktime.datasets.load_UCR_UEA_dataset``. sktime ships a few archives (GunPoint, BasicMotions,
OSULeaf, ACSF1, ...), which load offline; any other name is downloaded by sktime into its own data folder,
which needs the network. Shapes of the bundled ones (rows, channels x length):

============  =====  =====  ============
name          train  test   series
============  =====  =====  ============
GunPoint      50     150    1 x 150
BasicMotions  40     40     6 x 100
OSULeaf       200    242    1 x 427
ACSF1         100    100    1 x 1460
============  =====  =====  ============

Unequal-length archives (JapaneseVowels: 12 channels x 7 to 29 steps; PLAID) load too: each row keeps its own
length, and the series plugin pads a batch to its longest series.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, register_source


class UCRUEAOptions(SourceOptions):
    name: str = Field(description="Archive name as sktime spells it, e.g. GunPoint, BasicMotions, OSULeaf, ACSF1.")
    split: Literal["train", "test"] = Field("train", description="Official split.")


def load_arrays(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """One split as sktime gives it: equal-length archives as one 3-D array, unequal-length ones (JapaneseVowels,
    PLAID, ...) as one table per series, which sktime cannot stack.

    Returns:
        X: one float32 [C, L_i] array per row (L_i varies in an unequal-length archive); y: string labels [rows].
    """
    try:
        from sktime.datasets import load_UCR_UEA_dataset
    except ImportError as err:
        raise ImportError("the ucr_uea source needs sktime: pip install 'mmssl[timeseries]'") from err
    try:
        try:
            x, y = load_UCR_UEA_dataset(name, split=split, return_X_y=True, return_type="numpy3D")
            series = list(np.asarray(x, dtype=np.float32))
        except ValueError as unequal:  # "all input arrays must have the same shape"
            if "same shape" not in str(unequal):
                raise
            tables, y = load_UCR_UEA_dataset(name, split=split, return_X_y=True, return_type="df-list")
            series = [np.ascontiguousarray(t.to_numpy(dtype=np.float32).T) for t in tables]  # [L, C] -> [C, L]
    except Exception as err:
        raise ValueError(
            f"ucr_uea: cannot load {name!r} ({split}) with sktime: {type(err).__name__}: {err}; bundled names "
            "load offline (GunPoint, BasicMotions, OSULeaf, ACSF1, JapaneseVowels, PLAID, ...), others need a "
            "download"
        ) from err
    return series, np.asarray(y).astype(str)


@lru_cache(maxsize=32)
def class_names_of(name: str) -> tuple[str, ...]:
    """Sorted unique string labels over the train and test splits (one mapping for both)."""
    labels = set()
    for split in ("train", "test"):
        labels.update(load_arrays(name, split)[1].tolist())
    return tuple(sorted(labels))


@register_source("ucr_uea", UCRUEAOptions)
def load_ucr_uea(options: UCRUEAOptions, base: object = None) -> Source:
    """Rows ``{"series": float32 [C, L], "label": int}``; class names are the sorted unique string labels."""
    x, y = load_arrays(options.name, options.split)
    class_names = list(class_names_of(options.name))
    lookup = {label: i for i, label in enumerate(class_names)}
    n = min(len(y), options.limit or len(y))
    rows = [{"series": x[i], "label": lookup[y[i]]} for i in range(n)]
    return Source(rows, class_names, origin=f"ucr_uea:{options.name}/{options.split}", columns=["series", "label"])
