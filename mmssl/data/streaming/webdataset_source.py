"""The ``webdataset`` source: tar shards read sample by sample with the ``webdataset`` library.

A sample is the group of files sharing a key inside a shard (``000042.png``, ``000042.txt``, ``000042.cls``);
``columns`` maps each row column to one extension. Images and audio stay encoded bytes (the modality plugins decode
them in the DataLoader workers); ``txt``, ``cls``, ``json`` and ``npy`` are decoded here (``npy`` without pickle).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from mmssl.data.sources import Source, register_source
from mmssl.data.streaming.options import StreamOptions, limit_counts
from mmssl.data.streaming.shards import KEY, ShardedCorpus, ShardedRows

INDEX_FILE = "index.json"
INDEX_FORMAT = "mmssl-webdataset-index"


class WebDatasetOptions(StreamOptions):
    urls: str | list[str] | None = Field(
        None,
        description="Shards: a brace pattern (shards/train-{000000..000099}.tar) or a list; relative to the recipe.",
    )
    index: str | None = Field(
        None,
        description=f"An {INDEX_FILE} written by `mmssl data pack` (shards, sample counts, columns, class names); "
        "relative to the recipe. Without one, every shard is read once to count its samples.",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="Row column -> file extension, e.g. {image: jpg, caption: txt, label: cls}; default: the index's.",
    )
    class_names: list[str] | None = Field(None, description="Names of the integer classes; default: the index's.")


def decode_value(ext: str, data: bytes) -> Any:
    """The value of a file by extension: text, class index, JSON, numpy array, or the bytes themselves."""
    last = ext.rsplit(".", 1)[-1]
    if last in ("txt", "text"):
        return data.decode("utf-8")
    if last in ("cls", "cls2", "index"):
        return int(data.decode("ascii").strip())
    if last == "json":
        return json.loads(data)
    if last == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    return data


@dataclass
class TarReader:
    """Reads samples of tar shards in order with ``webdataset.tariterators``."""

    urls: list[str]
    columns: dict[str, str]

    def samples(self, shard: int) -> Iterator[dict[str, Any]]:
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_expander

        url = self.urls[shard]
        if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
            raise FileNotFoundError(f"shard {url} not found")
        stream = gopen(url, "rb")
        try:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
        except Exception as err:  # tarfile.ReadError, truncated streams, duplicate names
            raise ValueError(f"shard {url} is unreadable: {err}") from err
        finally:
            stream.close()

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        wanted = iter(offsets)
        target = next(wanted, None)
        if target is None:
            return
        for i, sample in enumerate(self.samples(shard)):
            if i == target:
                yield i, self.row(shard, sample)
                target = next(wanted, None)
                if target is None:
                    return

    def row(self, shard: int, sample: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {KEY: sample["__key__"]}
        for column, ext in self.columns.items():
            if ext in sample:
                try:
                    row[column] = decode_value(ext, sample[ext])
                except (ValueError, UnicodeDecodeError) as err:
                    raise ValueError(
                        f"shard {self.urls[shard]}, key {sample['__key__']!r}: {ext} file is not valid ({err})"
                    ) from err
        return row

    def count(self, shard: int) -> int:
        return sum(1 for _ in self.samples(shard))


def expand_urls(urls: str | list[str], base: Path) -> list[str]:
    from webdataset.shardlists import expand_urls as wds_expand

    items = [urls] if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        for url in wds_expand(item):
            remote = "://" in url or url.startswith("pipe:")
            out.append(url if remote or Path(url).is_absolute() else str(base / url))
    return out


def read_index(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"shard index {path} not found")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"shard index {path}: not valid JSON ({err.msg})") from err
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("shards"), list):
        raise ValueError(f"shard index {path}: expected a {INDEX_FORMAT} file written by `mmssl data pack`")
    return index


@register_source("webdataset", WebDatasetOptions)
def load_webdataset(options: WebDatasetOptions, base: Path) -> Source:
    """Tar shards as a streamed source; counts come from the index, or from one pass over each shard."""
    index: dict[str, Any] = {}
    if options.index:
        index_file = Path(options.index) if Path(options.index).is_absolute() else base / options.index
        index = read_index(index_file)
        urls = [str(index_file.parent / s["url"]) for s in index["shards"]]
        counts = [int(s["nsamples"]) for s in index["shards"]]
        if options.urls is not None:
            raise ValueError("webdataset: give `urls` or `index`, not both")
    elif options.urls is not None:
        urls, counts = expand_urls(options.urls, base), []
    else:
        raise ValueError("webdataset: give `urls` (shard paths or a brace pattern) or `index` (an index.json)")
    columns = options.columns or index.get("columns")
    if not columns:
        raise ValueError("webdataset: give `columns` (row column -> extension, e.g. {image: jpg, caption: txt})")
    reader = TarReader(urls, dict(columns))
    if not counts:
        counts = [reader.count(i) for i in range(len(urls))]
    counts = limit_counts(counts, options.limit)
    urls = urls[: len(counts)]
    reader.urls = urls
    class_names = options.class_names or index.get("class_names")
    corpus = ShardedCorpus(
        urls, counts, reader, class_names, origin=urls[0] if len(urls) == 1 else f"{urls[0]} (+{len(urls) - 1} shards)",
        columns=list(columns), shuffle_buffer=options.shuffle_buffer, shuffle_shards=options.shuffle_shards,
    )  # fmt: skip
    return Source(ShardedRows(corpus), class_names, origin=corpus.origin, columns=list(columns))
