"""The ``hf_dataset`` source: a Hugging Face ``datasets`` dataset, memory-mapped or streamed.

``streaming: false`` loads any dataset ``datasets.load_dataset`` (or ``load_from_disk``) opens (a hub id where
there is a network, a local folder, Parquet/Arrow/CSV/JSON files) as a memory-mapped Arrow table: rows are read
on demand, in virtual shards of ``shard_size``. ``streaming: true`` reads Parquet files as a ``datasets``
``IterableDataset`` without converting them: one shard per file, its row count from the Parquet metadata.
Columns decode through the dataset's features (an ``Image`` column arrives as a PIL image).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from mmssl.data.sources import Source, register_source
from mmssl.data.streaming.options import StreamOptions, limit_counts
from mmssl.data.streaming.shards import KEY, ShardedCorpus, ShardedRows


class HFDatasetOptions(StreamOptions):
    path: str = Field(
        description="A hub id, a local dataset folder (save_to_disk or files), or a file glob (data/*.parquet); "
        "relative to the recipe when it exists there."
    )
    name: str | None = Field(None, description="Dataset configuration name.")
    split: str = Field("train", description="Split to read.")
    data_files: str | list[str] | None = Field(None, description="Files of the split (passed to load_dataset).")
    streaming: bool = Field(False, description="Stream Parquet files instead of memory-mapping an Arrow table.")
    label_column: str | None = Field(None, description="Column of integer class labels (becomes `label`).")
    shard_size: int = Field(1000, ge=1, description="Rows per virtual shard of a memory-mapped table.")


@dataclass
class TableReader:
    """Reads rows of a memory-mapped ``datasets.Dataset`` by virtual shard."""

    table: Any
    shard_size: int
    label_column: str | None

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        base = shard * self.shard_size
        columns = self.table[[base + o for o in offsets]]
        for i, offset in enumerate(offsets):
            row = {name: values[i] for name, values in columns.items()}
            yield offset, _finish(row, str(base + offset), self.label_column)


@dataclass
class ParquetStreamReader:
    """Streams each Parquet file as a ``datasets`` ``IterableDataset``, skipping to the first wanted row."""

    files: list[str]
    label_column: str | None

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        import datasets

        file = self.files[shard]
        if not Path(file).is_file():
            raise FileNotFoundError(f"shard {file} not found")
        if not offsets:
            return
        try:
            stream = datasets.load_dataset("parquet", data_files=[file], split="train", streaming=True)
        except Exception as err:
            raise ValueError(f"shard {file} is unreadable: {err}") from err
        first = offsets[0]
        wanted = iter(offsets)
        target: int | None = next(wanted)
        for i, row in enumerate(stream.skip(first), start=first):
            if i == target:
                yield i, _finish(row, f"{Path(file).name}:{i}", self.label_column)
                target = next(wanted, None)
                if target is None:
                    return


def _finish(row: dict[str, Any], key: str, label_column: str | None) -> dict[str, Any]:
    if label_column is not None:
        row["label"] = int(row[label_column])
    row.setdefault(KEY, key)
    return row


def _local(path: str, base: Path) -> str:
    candidate = base / path
    found = candidate.exists() or glob.glob(str(candidate))
    return str(candidate) if not Path(path).is_absolute() and found else path


def _class_names(features: Any, label_column: str | None) -> list[str] | None:
    feature = features.get(label_column) if (features is not None and label_column) else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None


def _streamed(options: HFDatasetOptions, base: Path) -> ShardedCorpus:
    import pyarrow.parquet as pq

    pattern = _local(options.path, base)
    files = (
        sorted(glob.glob(pattern))
        if not Path(pattern).is_dir()
        else sorted(glob.glob(f"{pattern}/**/*.parquet", recursive=True))
    )
    if options.data_files is not None:
        patterns = [options.data_files] if isinstance(options.data_files, str) else options.data_files
        files = sorted(f for p in patterns for f in glob.glob(_local(p, base)))
    files = [f for f in files if f.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(
            f"hf_dataset {options.path}: streaming: true needs local Parquet files (their metadata gives the row "
            "counts that plan exact, resumable epochs); none found"
        )
    counts = []
    for file in files:
        try:
            counts.append(pq.ParquetFile(file).metadata.num_rows)
        except Exception as err:
            raise ValueError(f"shard {file} is not a readable Parquet file: {err}") from err
    counts = limit_counts(counts, options.limit)
    files = files[: len(counts)]
    schema = pq.read_schema(files[0])
    columns = [c for c in schema.names]
    class_names = None
    try:
        import datasets

        features = datasets.Features.from_arrow_schema(schema)
        class_names = _class_names(features, options.label_column)
    except Exception:
        pass
    origin = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    return ShardedCorpus(
        files, counts, ParquetStreamReader(files, options.label_column), class_names, origin,
        columns + (["label"] if options.label_column else []), options.shuffle_buffer, options.shuffle_shards,
    )  # fmt: skip


def _mapped(options: HFDatasetOptions, base: Path) -> ShardedCorpus:
    import datasets

    path = _local(options.path, base)
    try:
        if Path(path).is_dir() and (Path(path) / "dataset_info.json").is_file():
            table = datasets.load_from_disk(path)
        elif Path(path).is_dir() and (Path(path) / "dataset_dict.json").is_file():
            table = datasets.load_from_disk(path)[options.split]
        elif Path(path).is_file() or glob.glob(path) and not Path(path).is_dir():
            kind = Path(glob.glob(path)[0]).suffix.lstrip(".").replace("jsonl", "json")
            table = datasets.load_dataset(kind, data_files=path, split=options.split)
        else:
            table = datasets.load_dataset(path, options.name, split=options.split, data_files=options.data_files)
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f"hf_dataset {options.path}: {err}") from err
    if options.label_column and options.label_column not in table.column_names:
        raise KeyError(f"hf_dataset {options.path}: label_column {options.label_column!r} not in {table.column_names}")
    size = options.shard_size
    counts = limit_counts([min(size, len(table) - lo) for lo in range(0, len(table), size)], options.limit)
    names = [f"{options.path}[rows {i * size}..{i * size + c - 1}]" for i, c in enumerate(counts)]
    columns = list(table.column_names) + (["label"] if options.label_column else [])
    return ShardedCorpus(
        names, counts, TableReader(table, size, options.label_column),
        _class_names(table.features, options.label_column), options.path, columns, options.shuffle_buffer,
        options.shuffle_shards,
    )  # fmt: skip


@register_source("hf_dataset", HFDatasetOptions)
def load_hf_dataset(options: HFDatasetOptions, base: Path) -> Source:
    corpus = _streamed(options, base) if options.streaming else _mapped(options, base)
    return Source(ShardedRows(corpus), corpus.class_names, origin=corpus.origin, columns=corpus.columns)
