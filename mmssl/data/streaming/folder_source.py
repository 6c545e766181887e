"""The ``folder`` source: a directory tree where each first-level subfolder is a class (the ImageFolder layout).

Rows hold file paths; the modality plugin reading ``column`` decodes them in the DataLoader workers, so any
modality whose plugin reads files works (images, audio, ...). Files are listed once, sorted, and cut into
virtual shards for the epoch order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from mmssl.data.sources import Source, register_source
from mmssl.data.streaming.options import StreamOptions, limit_counts
from mmssl.data.streaming.shards import KEY, ShardedCorpus, ShardedRows


class FolderOptions(StreamOptions):
    path: str = Field(description="Root folder; each subfolder is a class. Relative to the recipe.")
    column: str = Field("image", description="Row column holding the file path (the modality's column).")
    extensions: list[str] | None = Field(
        None, description="File extensions to keep (e.g. [.png, .jpg]); default: every file not starting with '.'."
    )
    shard_size: int = Field(1000, ge=1, description="Files per virtual shard (the unit the epoch order permutes).")


@dataclass
class FileReader:
    """Reads rows ``{column: path, label: class index}`` of a sorted file list, by virtual shard."""

    root: Path
    files: list[tuple[str, int]]
    column: str
    shard_size: int

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        base = shard * self.shard_size
        for offset in offsets:
            relative, label = self.files[base + offset]
            yield offset, {self.column: self.root / relative, "label": label, KEY: relative}


def list_files(root: Path, extensions: list[str] | None) -> tuple[list[str], list[tuple[str, int]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"folder source {root} not found (expected a folder with one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"folder source {root}: no class subfolders (expected {root}/CLASS/FILE)")
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions} if extensions else None
    files = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and not path.name.startswith(".") and (wanted is None or path.suffix.lower() in wanted):
                files.append((str(path.relative_to(root)), label))
    if not files:
        raise ValueError(f"folder source {root}: no files in its class subfolders {classes[:5]}")
    return classes, files


@register_source("folder", FolderOptions)
def load_folder(options: FolderOptions, base: Path) -> Source:
    root = Path(options.path) if Path(options.path).is_absolute() else base / options.path
    classes, files = list_files(root, options.extensions)
    size = options.shard_size
    counts = limit_counts([min(size, len(files) - lo) for lo in range(0, len(files), size)], options.limit)
    names = [f"{root}[files {i * size}..{i * size + c - 1}]" for i, c in enumerate(counts)]
    corpus = ShardedCorpus(
        names, counts, FileReader(root, files, options.column, size), classes, origin=str(root),
        columns=[options.column, "label"], shuffle_buffer=options.shuffle_buffer,
        shuffle_shards=options.shuffle_shards,
    )  # fmt: skip
    return Source(ShardedRows(corpus), classes, origin=str(root), columns=[options.column, "label"])
