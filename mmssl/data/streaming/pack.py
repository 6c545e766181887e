"""``mmssl data pack``: write any source as WebDataset tar shards plus an index of per-shard sample counts.

Shards are written one at a time into a temporary file and renamed into place; ``index.partial.json`` records the
finished ones, so an interrupted pack resumes at the first unfinished shard. The final ``index.json`` lists every
shard with its sample count, the column -> extension map and the class names, which is all a run needs to plan
epochs and shard the data across processes without opening a shard.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.data.sources import Source
from mmssl.data.streaming.shards import KEY
from mmssl.data.streaming.webdataset_source import INDEX_FILE, INDEX_FORMAT

PARTIAL_FILE = "index.partial.json"
SKIPPED_COLUMNS = (KEY,)


def encode_value(value: Any) -> tuple[str, bytes]:
    """A row value -> (extension, file bytes): images as PNG, strings as txt, files as themselves, else json/npy.

    Raises:
        ValueError: a value of a type that has no file form.
    """
    if isinstance(value, Path):
        return value.suffix.lstrip(".").lower() or "bin", value.read_bytes()
    if isinstance(value, bool | int | float | dict | list | None):
        return "json", json.dumps(value).encode()
    if isinstance(value, str):
        return "txt", value.encode("utf-8")
    if isinstance(value, bytes):
        return "bin", value
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8 and (value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4))):
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(value.squeeze(2) if value.ndim == 3 and value.shape[2] == 1 else value).save(buffer, "PNG")
            return "png", buffer.getvalue()
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return "npy", buffer.getvalue()
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, "PNG")
        return "png", buffer.getvalue()
    raise ValueError(f"cannot store a {type(value).__name__} in a shard")


def encode_row(row: dict[str, Any], key: str, extensions: dict[str, str]) -> dict[str, Any]:
    """One webdataset sample; fixes each column's extension on its first value and checks the rest agree."""
    sample: dict[str, Any] = {"__key__": key}
    for column, value in row.items():
        if column in SKIPPED_COLUMNS or value is None:
            continue
        if column == "label" and isinstance(value, int | np.integer):
            ext, data = "cls", str(int(value)).encode()
        else:
            ext, data = encode_value(value)
        known = extensions.setdefault(column, ext)
        if known != ext:
            raise ValueError(f"row {key}, column {column!r}: a .{ext} value in a column of .{known} values")
        if ext in sample:
            raise ValueError(f"row {key}: two columns store .{ext} files; a sample holds one file per extension")
        sample[ext] = data
    return sample


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def pack(
    source: Source,
    output: Path,
    shard_size: int,
    prefix: str = "shard",
    spec: dict[str, Any] | None = None,
    progress: Callable[[Iterable[Any], int, int], Iterator[Any]] | None = None,
) -> dict[str, Any]:
    """Write ``source`` as ``output/{prefix}-000000.tar, ...`` and ``output/index.json``; returns the index.

    Args:
        source: Any source (in memory or streamed), read in its natural order.
        output: Folder to write; an unfinished pack there is resumed.
        shard_size: Samples per shard (the last one holds the rest).
        prefix: Shard file name prefix.
        spec: The source spec, recorded in the index.
        progress: Wraps the row iterator for a progress bar: ``progress(rows, total, initial)``.

    Raises:
        ValueError: an unfinished pack in ``output`` with another shard size, or a row that cannot be stored.
    """
    import webdataset as wds

    output.mkdir(parents=True, exist_ok=True)
    if (output / INDEX_FILE).is_file():
        index = json.loads((output / INDEX_FILE).read_text())
        if index.get("shard_size") == shard_size and sum(s["nsamples"] for s in index["shards"]) == len(source):
            return index  # already finished
        raise ValueError(f"{output} already holds a finished pack with other settings; choose another --output")
    partial_file = output / PARTIAL_FILE
    state = json.loads(partial_file.read_text()) if partial_file.is_file() else {}
    if state and state.get("shard_size") != shard_size:
        raise ValueError(
            f"{output} holds an unfinished pack with --shard-size {state.get('shard_size')}; resume it with that size "
            "or choose another --output"
        )
    shards: list[dict[str, Any]] = state.get("shards", [])
    extensions: dict[str, str] = dict(state.get("columns", {}))
    done = sum(s["nsamples"] for s in shards)
    total = len(source)
    unread: Iterator[dict[str, Any]] = iter(source.rows)
    for _ in range(done):  # an in-memory source could slice; a streamed one has to read past them anyway
        next(unread)
    rows: Iterable[dict[str, Any]] = unread
    if progress is not None:
        rows = progress(rows, total, done)
    number, position = len(shards), done
    writer, tmp, count = None, None, 0

    def finish() -> None:
        nonlocal writer, count
        assert writer is not None and tmp is not None
        writer.close()
        name = f"{prefix}-{number:06d}.tar"
        os.replace(tmp, output / name)
        shards.append({"url": name, "nsamples": count})
        _write_json(partial_file, {"shard_size": shard_size, "shards": shards, "columns": extensions})
        writer, count = None, 0

    for row in rows:
        if writer is None:
            tmp = output / f".{prefix}-{number:06d}.tar.tmp"
            writer = wds.TarWriter(str(tmp), encoder=False)
        writer.write(encode_row(row, f"{position:09d}", extensions))
        count += 1
        position += 1
        if count == shard_size:
            finish()
            number += 1
    if writer is not None:
        finish()
    index = {
        "format": INDEX_FORMAT,
        "shard_size": shard_size,
        "shards": shards,
        "columns": extensions,
        "class_names": source.class_names,
        "source": spec,
    }
    _write_json(output / INDEX_FILE, index)
    partial_file.unlink(missing_ok=True)
    return index
