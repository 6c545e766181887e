"""Encoded media in one table cell, as Hugging Face ``datasets`` stores its ``Image`` and ``Audio`` features.

A parquet file written by ``datasets`` (``Dataset.to_parquet``, or a dataset's own parquet shards) holds an image
or audio column as a struct ``{"bytes": <encoded file>, "path": <its name>}``; the manifest reader gives it as a
dict. A decoded ``Audio`` value is ``{"array": ..., "sampling_rate": ...}``.
"""

from __future__ import annotations

from typing import Any


def is_media_cell(value: Any) -> bool:
    """Whether ``value`` is such a dict: it has ``bytes`` or ``path``, or ``array`` and ``sampling_rate``."""
    return isinstance(value, dict) and ("bytes" in value or "path" in value or {"array", "sampling_rate"} <= set(value))


def media_payload(cell: dict[str, Any]) -> Any:
    """What the decoders read from the cell: its encoded ``bytes``; else its ``path`` (a str); else, for decoded
    audio, ``(array, sampling_rate)``.

    Raises:
        ValueError: The cell has none of them (the message lists its keys).
    """
    data = cell.get("bytes")
    if data is not None:
        return bytes(data)
    if cell.get("path"):
        return str(cell["path"])
    if cell.get("array") is not None and cell.get("sampling_rate"):
        return cell["array"], int(cell["sampling_rate"])
    raise ValueError(f"a media cell with no bytes, path or array (keys {sorted(cell)})")
