"""Streamed training batches: sharded across processes and DataLoader workers, resumable at any sample.

Process ``r`` of ``R`` takes the global positions ``start + b*G + r*B ... + B`` for its micro-batch ``b``
(``G = R*B``, see ``order``); DataLoader worker ``w`` of ``W`` builds the micro-batches ``b = w, w + W, ...``, which
the DataLoader hands out round-robin, i.e. in order. Decoding, augmentation and collation run in the workers.
A worker reads one shuffle block at a time and keeps only the raw rows of its own coming batches, so memory
stays flat however large the corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmssl.batch import Batch
from mmssl.data.dataset import Collator, RowDecodeError, row_views
from mmssl.data.errors import OnError, SkippedRow
from mmssl.data.streaming.order import EpochOrder
from mmssl.data.streaming.shards import KEY, ShardedCorpus
from mmssl.modality import Processor


@dataclass(frozen=True)
class StreamSlice:
    """Which global positions one process takes: from ``start``, ``batch_size`` of every ``world_size`` slots."""

    start: int
    batch_size: int
    rank: int = 0
    world_size: int = 1

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def positions(self, micro_batch: int) -> range:
        lo = self.start + micro_batch * self.global_batch + self.rank * self.batch_size
        return range(lo, lo + self.batch_size)


class StreamBatches(IterableDataset):
    """Endless micro-batches of one process, each a collated ``Batch``.

    Args:
        corpus: The shards.
        order: The epoch order over ``corpus``.
        part: This process's positions.
        columns: modality -> column of the rows holding its raw value.
        processors: modality -> fitted processor.
        views: modality -> view names.
        seed: Run seed (random views come from ``rng(seed, epoch, position in epoch)``).
        on_error: ``raise``: a sample that cannot be decoded stops the run, naming its shard and key; ``skip``: its
            slot is filled with another row of the same batch and it is reported in ``Batch.skipped``.
    """

    def __init__(
        self,
        corpus: ShardedCorpus,
        order: EpochOrder,
        part: StreamSlice,
        columns: dict[str, str],
        processors: dict[str, Processor],
        views: dict[str, list[str]],
        seed: int,
        on_error: OnError = "raise",
    ) -> None:
        self.corpus, self.order, self.part, self.on_error = corpus, order, part, on_error
        self.columns, self.processors, self.views, self.seed = columns, processors, views, seed
        self.collate = Collator(processors, views)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cache: dict[int, dict[str, Any]] = {}
        batch = worker
        while True:
            positions = self.part.positions(batch)
            for p in positions:
                if p not in cache:
                    self._read_block(cache, p, batch, workers)
            yield self._batch([(p, cache.pop(p)) for p in positions])
            batch += workers

    def _read_block(self, cache: dict[int, dict[str, Any]], position: int, batch: int, workers: int) -> None:
        """Read the rows of every position of this worker's coming batches that lie in ``position``'s block."""
        lo, hi = self.order.block_range(*self.order.block_of(position))
        wanted: dict[int, int] = {}
        b = batch
        while True:
            span = self.part.positions(b)
            if span.start >= hi:
                break
            for p in span:
                if lo <= p < hi and p not in cache:
                    wanted[p] = self.order.natural(p)[1]
            b += workers
        rows = self.corpus.read(list(wanted.values()))
        for p, index in wanted.items():
            cache[p] = rows[index]

    def _batch(self, rows: list[tuple[int, dict[str, Any]]]) -> Batch:
        items: list[dict[str, Any] | None] = []
        bad: list[SkippedRow] = []
        for position, row in rows:
            epoch, index = self.order.natural(position)
            rng = np.random.default_rng([self.seed, epoch, position - epoch * self.order.size])
            try:
                items.append(row_views(row, index, rng, self.columns, self.processors, self.views))
            except RowDecodeError as err:
                shard, _ = self.corpus.locate(index)
                key = str(row.get(KEY, index))
                if self.on_error != "skip":
                    raise ValueError(
                        f"shard {self.corpus.names[shard]}, key {key!r}, {err} "
                        "(data.on_error: skip trains past unreadable samples)"
                    ) from err.__cause__
                cause = err.__cause__ or err
                bad.append(SkippedRow(0, index, self.corpus.names[shard], err.column, f"key {key}", str(cause)))
                items.append(None)
        good = [item for item in items if item is not None]
        if not good:
            raise ValueError(f"every sample of a batch failed to decode; the first: {bad[0]}")
        # A bad sample's slot repeats another row of the batch: every process keeps the same batch size, which
        # DDP and the cross-process gathers of contrastive objectives need.
        filled = [item if item is not None else good[i % len(good)] for i, item in enumerate(items)]
        batch = self.collate(filled)
        batch.skipped = bad
        return batch


def _single_threaded_worker(worker_id: int) -> None:
    """Data workers decode and augment one row at a time; torch threads there only fight the training step."""
    torch.set_num_threads(1)


def stream_loader(
    corpus: ShardedCorpus,
    order: EpochOrder,
    part: StreamSlice,
    columns: dict[str, str],
    processors: dict[str, Processor],
    views: dict[str, list[str]],
    seed: int,
    num_workers: int,
    on_error: OnError = "raise",
    prefetch: int = 2,
    worker_init: Callable[[int], None] | None = None,
) -> DataLoader:
    """A DataLoader over ``StreamBatches``: batches come already collated, ``prefetch`` per worker in flight."""
    dataset = StreamBatches(corpus, order, part, columns, processors, views, seed, on_error)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=prefetch if num_workers > 0 else None,
        worker_init_fn=worker_init or _single_threaded_worker,
        generator=torch.Generator().manual_seed(seed),
    )
