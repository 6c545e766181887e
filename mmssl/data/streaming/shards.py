"""A corpus split into shards with known sample counts, read shard by shard without holding it in memory.

``ShardedCorpus`` is what every streamed source returns (inside a ``Source`` whose ``rows`` is a lazy
``ShardedRows``): the shard names and counts plan an epoch without opening a shard, and a ``ShardReader`` reads
the samples at given offsets of one shard. Sequential readers (tar shards, streamed Parquet) read the shard from
its first requested offset to its last and keep only the requested samples; random-access readers (folders, Arrow
tables) fetch each one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import numpy as np

KEY = "__key__"
"""Row entry holding the sample's key (its name inside the shard), for error messages and bookkeeping."""


class ShardReader(Protocol):
    """Reads samples of a corpus's shards. Must be picklable (DataLoader workers get a copy)."""

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(offset, row)`` for the sorted ``offsets`` of shard ``shard``, in that order.

        Raises:
            FileNotFoundError / ValueError: the shard is missing or unreadable (the message names it).
        """
        ...


@dataclass
class ShardedCorpus:
    """Shards of samples: names (for messages), counts (for planning) and a reader.

    Attributes:
        names: One name per shard (a path, or ``file[rows a..b]``).
        counts: Samples per shard.
        reader: Reads samples by shard and offset.
        class_names: Names of the integer classes in the ``label`` column, when there is one.
        origin: Where the corpus comes from, for messages.
        columns: Column names of the rows.
        shuffle_buffer: Samples per shuffled block of an epoch (see ``order``).
        shuffle_shards: Permute the shards every epoch.
    """

    names: list[str]
    counts: list[int]
    reader: ShardReader
    class_names: list[str] | None = None
    origin: str = ""
    columns: list[str] = field(default_factory=list)
    shuffle_buffer: int = 10000
    shuffle_shards: bool = True

    def __post_init__(self) -> None:
        if len(self.names) != len(self.counts):
            raise ValueError(f"{self.origin}: {len(self.names)} shard names but {len(self.counts)} counts")
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(self.counts, dtype=np.int64))])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Natural index (shard after shard) -> (shard, offset)."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.origin}: sample {index} out of range (has {len(self)})")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, index - int(self.starts[shard])

    def read(self, indices: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Rows of the given natural indices, each shard read once."""
        by_shard: dict[int, list[int]] = {}
        for index in sorted(set(int(i) for i in indices)):
            shard, offset = self.locate(index)
            by_shard.setdefault(shard, []).append(offset)
        out: dict[int, dict[str, Any]] = {}
        for shard, offsets in by_shard.items():
            got = 0
            for offset, row in self.reader.read(shard, offsets):
                out[int(self.starts[shard]) + offset] = row
                got += 1
            if got != len(offsets):
                raise ValueError(f"shard {self.names[shard]} holds fewer samples than its count {self.counts[shard]}")
        return out

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row in natural order, one shard at a time."""
        for shard, count in enumerate(self.counts):
            got = 0
            for _, row in self.reader.read(shard, range(count)):
                got += 1
                yield row
            if got != count:
                raise ValueError(f"shard {self.names[shard]} holds {got} samples, its count says {count}")


class ShardedRows(Sequence[dict[str, Any]]):
    """A ``Source.rows`` over a ``ShardedCorpus``: indexable and iterable, nothing held in memory.

    Indexing one row reads ahead up to ``READ_AHEAD`` rows of the same shard and keeps them until the next miss,
    so ``[rows[i] for i in range(n)]`` reads each shard once instead of once per row.
    """

    READ_AHEAD = 256

    def __init__(self, corpus: ShardedCorpus) -> None:
        self.corpus = corpus
        self._cached: dict[int, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "_cached": {}}

    def __len__(self) -> int:
        return len(self.corpus)

    def declared_classes(self) -> set[int] | None:
        """The class indices the corpus declares (``class_names``), so that setting up a run's label space need
        not read every shard; None when it declares none."""
        names = self.corpus.class_names
        return set(range(len(names))) if names else None

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            wanted = list(range(len(self)))[index]
            rows = self.corpus.read(wanted)
            return [rows[i] for i in wanted]
        if index < 0:
            index += len(self)
        if index not in self._cached:
            shard, offset = self.corpus.locate(index)
            end = min(index + self.READ_AHEAD, int(self.corpus.starts[shard + 1]))
            self._cached = self.corpus.read(range(index, end))
        return self._cached[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.corpus.iter_rows()


@dataclass
class ConcatReader:
    """Reader of a concatenation: shard ``i`` is shard ``parts[i][1]`` of corpus ``parts[i][0]``."""

    corpora: list[ShardedCorpus]
    parts: list[tuple[int, int]]

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        corpus, inner = self.parts[shard]
        return self.corpora[corpus].reader.read(inner, offsets)


def concat_corpora(corpora: list[ShardedCorpus], repeats: list[int], class_names: list[str] | None) -> ShardedCorpus:
    """The shards of every corpus, each repeated ``repeats[i]`` times per epoch."""
    names, counts, parts = [], [], []
    for c, (corpus, times) in enumerate(zip(corpora, repeats, strict=True)):
        for _ in range(times):
            for s, (name, count) in enumerate(zip(corpus.names, corpus.counts, strict=True)):
                names.append(name)
                counts.append(count)
                parts.append((c, s))
    columns: list[str] = []
    for corpus in corpora:
        columns.extend(col for col in corpus.columns if col not in columns)
    origin = f"concat({'; '.join(c.origin for c in corpora)})"
    buffer = max(c.shuffle_buffer for c in corpora)
    shuffle = any(c.shuffle_shards for c in corpora)
    return ShardedCorpus(names, counts, ConcatReader(corpora, parts), class_names, origin, columns, buffer, shuffle)


@dataclass
class RowsReader:
    """Reader of rows already in memory, cut into virtual shards of ``shard_size``."""

    rows: Sequence[dict[str, Any]]
    shard_size: int

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        base = shard * self.shard_size
        for offset in offsets:
            row = self.rows[base + offset]
            yield offset, row if KEY in row else {**row, KEY: str(base + offset)}


def corpus_of_rows(
    rows: Sequence[dict[str, Any]],
    origin: str,
    class_names: list[str] | None,
    columns: list[str],
    shard_size: int = 1000,
) -> ShardedCorpus:
    """In-memory rows as a corpus of virtual shards (to mix them with streamed parts in ``concat``)."""
    n = len(rows)
    counts = [min(shard_size, n - lo) for lo in range(0, n, shard_size)]
    names = [f"{origin}[rows {lo}..{lo + c - 1}]" for lo, c in zip(range(0, n, shard_size), counts, strict=True)]
    return ShardedCorpus(names, counts, RowsReader(rows, shard_size), class_names, origin, columns)
