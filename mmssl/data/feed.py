"""The training data feed: batches for one process, from in-memory rows or a streamed corpus, and its resumable state.

In-memory sources keep their map-style order (``ResumableBatchSampler``, resumed from the optimizer step).
Streamed sources (``Source.rows`` is a ``ShardedRows``) are read by ``StreamBatches``; their state is the global
sample position consumed so far, which the checkpoint records (``data.json``) so that a resumed run, with the
same or another number of processes, continues the same epoch at the next unseen sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmssl.batch import Batch
from mmssl.data.dataset import Collator, ViewDataset
from mmssl.data.errors import OnError
from mmssl.data.sampler import ResumableBatchSampler
from mmssl.data.sources import Source
from mmssl.data.streaming.loader import StreamSlice, stream_loader
from mmssl.data.streaming.order import EpochOrder
from mmssl.data.streaming.shards import ShardedCorpus, ShardedRows
from mmssl.modality import Processor


def default_workers(cores: int | None = None) -> int:
    """DataLoader workers when ``train.num_workers`` is not set: a quarter of the cores, at least 1, at most 8.

    Measured on 2 shared cores (``benchmarks/data_loading.py``, quickstart, numbers in ``benchmarks/README.md``):
    end-to-end / compute-only samples/s was 0.69 loading in the training process, 1.09 with 1 worker and 0.78 with
    2 (which take the cores the step needs). With the step on a GPU, more cores are free for workers.
    """
    cores = cores or os.cpu_count() or 1
    return max(1, min(8, cores // 4))


def corpus_of(source: Source) -> ShardedCorpus | None:
    """The streamed corpus behind a source, or None for rows in memory."""
    return source.rows.corpus if isinstance(source.rows, ShardedRows) else None


class TrainFeed:
    """Micro-batches of one process and the data position to checkpoint.

    Args:
        source: The training split.
        columns: modality -> column holding it.
        processors: modality -> fitted processor.
        views: modality -> view names.
        seed: Run seed.
        batch_size: Rows per process per micro-batch.
        rank: This process.
        world_size: Number of processes.
        num_workers: DataLoader workers (None: ``default_workers()``).
        start_micro_batch: Micro-batches already consumed (in-memory sources resume from it).
        state: The ``data.json`` of the checkpoint resumed from (streamed sources resume from its position).
        on_error: ``data.on_error``; skipped samples travel in ``Batch.skipped`` (the trainer counts them).
        worker_init: Runs first in each DataLoader worker (default: one torch thread).
    """

    def __init__(
        self,
        source: Source,
        columns: dict[str, str],
        processors: dict[str, Processor],
        views: dict[str, list[str]],
        seed: int,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int | None,
        start_micro_batch: int,
        state: dict[str, Any] | None,
        on_error: OnError = "raise",
        worker_init: Callable[[int], None] | None = None,
    ) -> None:
        self.corpus = corpus_of(source)
        self.consumed = 0
        num_workers = default_workers() if num_workers is None else num_workers
        if self.corpus is None:
            dataset = ViewDataset(source, columns, processors, views, seed, on_error)
            sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank, world_size, start=start_micro_batch)
            self.loader: DataLoader[Any] = DataLoader(
                dataset,  # type: ignore[arg-type]  # map-style by its __getitem__ and __len__, not a Dataset subclass
                batch_sampler=sampler,
                collate_fn=Collator(processors, views),
                num_workers=num_workers,
                persistent_workers=num_workers > 0,
                generator=torch.Generator().manual_seed(seed),  # keeps worker seeding off the global RNG
                worker_init_fn=worker_init or _single_threaded_worker,
            )
        else:
            if state is not None and "position" in state:
                start = int(state["position"])
            else:  # a checkpoint without data state (or a fresh run): as many global batches as micro-batches
                start = start_micro_batch * batch_size * world_size
            self.slice = StreamSlice(start, batch_size, rank, world_size)
            self.order = EpochOrder(self.corpus.counts, seed, self.corpus.shuffle_buffer, self.corpus.shuffle_shards)
            self.loader = stream_loader(
                self.corpus, self.order, self.slice, columns, processors, views, seed, num_workers, on_error,
                worker_init=worker_init,
            )  # fmt: skip
        self.batches = iter(self.loader)

    @property
    def streamed(self) -> bool:
        return self.corpus is not None

    def next(self) -> Batch:
        """The next micro-batch (its unreadable samples, under ``skip``, in ``Batch.skipped``)."""
        batch = next(self.batches)
        self.consumed += 1
        return batch

    def state(self) -> dict[str, Any]:
        """The ``data.json`` of a checkpoint taken now (streamed sources only): the next unseen global position."""
        position = self.slice.start + self.consumed * self.slice.global_batch
        epoch, within = divmod(position, self.order.size)
        return {"position": position, "epoch": epoch, "position_in_epoch": within, "epoch_size": self.order.size}


def _single_threaded_worker(worker_id: int) -> None:
    """Data workers decode and augment one row at a time; torch threads there only fight the training step."""
    torch.set_num_threads(1)
