"""The order of a streamed epoch: a pure function of (seed, epoch, sample position).

An epoch permutes the shards (``rng(seed, epoch)``), reads them one after another as a stream, and shuffles that
stream in consecutive blocks of ``shuffle_buffer`` samples (block ``j`` is permuted by ``rng(seed, epoch, j)``), so
samples mix across the several shards a block spans while a reader only ever needs one block at a time.

Epochs follow each other as one endless stream of global positions ``P = epoch * N + q``. Process ``r`` of ``R``
takes positions ``[b*G + r*B, b*G + (r+1)*B)`` for its micro-batch ``b`` (``G = R*B``), so the sample at a global
position never depends on the number of processes or DataLoader workers, and a batch that straddles the end of an
epoch takes its last samples from the start of the next one: nothing is dropped or repeated.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class EpochOrder:
    """Maps global stream positions to natural sample indices (shard after shard).

    Args:
        counts: Samples per shard.
        seed: Run seed.
        shuffle_buffer: Samples per shuffled block; 1 keeps the (shard-permuted) stream order.
        shuffle_shards: Permute the shards each epoch (else natural shard order).
    """

    def __init__(self, counts: list[int], seed: int, shuffle_buffer: int, shuffle_shards: bool = True) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.size = int(self.counts.sum())
        if self.size == 0:
            raise ValueError("the streamed corpus has no samples")
        self.natural_starts = np.concatenate([[0], np.cumsum(self.counts)])[:-1]
        self.seed, self.buffer, self.shuffle_shards = seed, max(1, shuffle_buffer), shuffle_shards
        self._make_caches()

    def _make_caches(self) -> None:
        self._epoch = lru_cache(maxsize=4)(self._epoch_layout)
        self._block = lru_cache(maxsize=64)(self._block_perm)

    def __getstate__(self) -> dict:
        """Picklable for spawned DataLoader workers: the caches are rebuilt there."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_epoch", "_block")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        shards = np.arange(len(self.counts))
        if self.shuffle_shards:
            shards = np.random.default_rng([self.seed, epoch]).permutation(len(self.counts))
        stream_starts = np.concatenate([[0], np.cumsum(self.counts[shards])])
        return shards, stream_starts

    def _block_perm(self, epoch: int, block: int) -> np.ndarray:
        length = min(self.buffer, self.size - block * self.buffer)
        return np.random.default_rng([self.seed, epoch, block, 1]).permutation(length)

    def block_of(self, position: int) -> tuple[int, int]:
        """Global position -> (epoch, block)."""
        epoch, q = divmod(int(position), self.size)
        return epoch, q // self.buffer

    def natural(self, position: int) -> tuple[int, int]:
        """Global position -> (epoch, natural index of the sample it holds)."""
        epoch, q = divmod(int(position), self.size)
        block = q // self.buffer
        stream = block * self.buffer + int(self._block(epoch, block)[q - block * self.buffer])
        shards, stream_starts = self._epoch(epoch)
        k = int(np.searchsorted(stream_starts, stream, side="right")) - 1
        return epoch, int(self.natural_starts[shards[k]]) + stream - int(stream_starts[k])

    def block_range(self, epoch: int, block: int) -> tuple[int, int]:
        """Global positions ``[lo, hi)`` of a block."""
        lo = epoch * self.size + block * self.buffer
        return lo, min(lo + self.buffer, (epoch + 1) * self.size)
