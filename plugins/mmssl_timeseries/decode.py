"""Decoding raw time-series values (arrays, lists, tensors, data frames, .npy/.csv/.parquet files) to [C, L]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

_EXPECTED = (
    "a numpy array / nested list / tensor of shape [C, L] (or [L] when univariate), a pandas DataFrame "
    "(columns = channels, rows = time), or a path to a .npy, .csv or .parquet file"
)


def decode_series(raw: Any, channels: int = 1) -> np.ndarray:
    """Decode one raw series.

    Arrays are channel-first, [C, L]; a 1-D array is a univariate series [L]. Tables (.csv, .parquet,
    DataFrames) hold one channel per column and one time step per row. A CSV may have a header row: it is
    recognised by a cell that is not a number, so a header of numbers only (pandas' default 0, 1, ...) is read
    as data; write such files without a header. Unequal-length series stored in a fixed-size array are padded
    with NaN at the end: the time steps at the end where every channel is NaN are trimmed. Any other NaN or
    infinite value is an error.

    Args:
        raw: An ``np.ndarray``, ``list``/``tuple``, ``torch.Tensor``, ``pandas.DataFrame``, or a ``str``/``Path``
            to a ``.npy`` ([C, L] or [L]), ``.csv`` or ``.parquet`` file (columns = channels, rows = time).
        channels: Channels C the series must have.

    Returns:
        float32 array.

    Shapes:
        output: [channels, L] with L >= 1.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A file or value that is not a numeric series of ``channels`` channels.
        TypeError: A value of another type.
    """
    if isinstance(raw, str | Path):
        array, what = _read_path(Path(raw), channels), f"time-series file {raw}"
    elif isinstance(raw, np.ndarray):
        array, what = raw, f"array of shape {raw.shape}"
    elif isinstance(raw, torch.Tensor):
        array, what = raw.detach().cpu().numpy(), f"tensor of shape {list(raw.shape)}"
    elif isinstance(raw, list | tuple):
        try:
            array = np.asarray(raw, dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"cannot decode a list as a time series ({err}); expected a list of numbers [L] or a list of "
                f"{channels} equal-length lists [C, L] (pad shorter channels with NaN at the end)"
            ) from err
        what = f"list of shape {array.shape}"
    elif _is_data_frame(raw):
        array, what = _table_to_array(raw, "DataFrame"), f"DataFrame with {raw.shape[1]} columns"
    else:
        raise TypeError(f"cannot decode a time series from {type(raw).__name__}: expected {_EXPECTED}")
    return _check(array, channels, what)


def _is_data_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")


def _read_path(path: Path, channels: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"time-series file {path} not found (expected {_EXPECTED})")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"time-series file {path} is not a readable .npy array: {err}") from err
    import pandas as pd

    if suffix == ".csv":
        try:
            table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        except (ValueError, OSError, pd.errors.ParserError) as err:
            raise ValueError(f"time-series file {path} is not a readable CSV file: {err}") from err
        if len(table) and any(cell.strip() and not _is_number(cell) for cell in table.iloc[0]):
            table = table.iloc[1:]  # a header row
        table = table.replace(r"^\s*$", "nan", regex=True)
        return _table_to_array(table, f"time-series file {path}")
    if suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except ImportError as err:
            raise ImportError(
                f"reading time-series file {path} needs a Parquet engine for pandas: pip install pyarrow"
            ) from err
        except Exception as err:  # pyarrow raises its own error types
            raise ValueError(f"time-series file {path} is not a readable Parquet file: {err}") from err
        return _table_to_array(table, f"time-series file {path}")
    raise ValueError(f"time-series file {path}: unsupported suffix {path.suffix!r}; expected .npy, .csv or .parquet")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table_to_array(table: Any, what: str) -> np.ndarray:
    """Columns = channels, rows = time -> [C, L]."""
    try:
        values = table.to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"cannot decode {what}: every cell must be a number (columns = channels, rows = time): {err}"
        ) from err
    return values.T


def _check(array: np.ndarray, channels: int, what: str) -> np.ndarray:
    """Check the shape and values of a channel-first array and trim its NaN tail."""
    if array.ndim == 1:
        array = array[None, :]
    expected = f"[{channels}, L]" + (" or [L]" if channels == 1 else "")
    if array.ndim != 2 or array.shape[0] != channels:
        hint = ""
        if array.ndim == 2 and array.shape[1] == channels:
            hint = " (it looks time-major: arrays are channel-first, transpose it)"
        raise ValueError(
            f"cannot decode {what}: expected shape {expected} for {channels} channel(s), got {list(array.shape)}{hint}"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"cannot decode {what}: expected numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    missing = np.isnan(values).all(axis=0)
    length = int(len(missing) - np.argmin(missing[::-1])) if not missing.all() else 0
    if length == 0:
        raise ValueError(f"cannot decode {what}: the series is empty (no time step with a value)")
    values = values[:, :length]
    if not np.isfinite(values).all():
        raise ValueError(
            f"cannot decode {what}: it holds NaN or infinite values inside the series (only a NaN tail shared "
            "by all channels is trimmed; fill gaps first)"
        )
    return np.ascontiguousarray(values, dtype=np.float32)
