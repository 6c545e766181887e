"""Deterministic, resumable batch order keyed by (seed, epoch).

Micro-batch ``m`` of a run is a pure function of the seed, the dataset size, the batch size and the number of
processes, so a resumed run continues with exactly the rows an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ResumableBatchSampler:
    """Yields lists of ``(row_index, epoch)`` for one process, forever, from micro-batch ``start``.

    Each epoch is a fresh permutation drawn from ``np.random.default_rng([seed, epoch])``; the tail that does not
    fill a whole global batch is dropped.

    Args:
        num_rows: Dataset size.
        batch_size: Rows per process per micro-batch.
        seed: Run seed.
        rank: This process's index.
        world_size: Number of processes.
        start: First micro-batch to yield (``optimizer_step * grad_accum`` when resuming).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.global_batch = batch_size * world_size
        if num_rows < self.global_batch:
            raise ValueError(
                f"the training data has {num_rows} rows, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.batches_per_epoch = num_rows // self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def batch(self, micro_step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(micro_step, self.batches_per_epoch)
        lo = position * self.global_batch + self.rank * self.batch_size
        rows = self.epoch_order(epoch)[lo : lo + self.batch_size]
        return [(int(i), epoch) for i in rows]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch, order = self.start, -1, None
        while True:
            e, position = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            lo = position * self.global_batch + self.rank * self.batch_size
            yield [(int(i), epoch) for i in order[lo : lo + self.batch_size]]
            step += 1
