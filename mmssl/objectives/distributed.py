"""Cross-process helpers for objectives whose negatives span the global batch.

Contrastive objectives (InfoNCE, CLIP, SigLIP) get better with more negatives, so
under data parallelism every process compares its local rows with the rows of *all*
processes. Doing that correctly needs a gather that keeps autograd, which is what
:func:`gather_with_grad` provides.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

# ``torch.distributed.nn.functional.all_gather`` is deprecated in favour of a private API
# (``torch.distributed._functional_collectives``); it is still the public, backend-agnostic
# autograd-aware gather, so silence just that message.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning
)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group, or 1 when not running distributed."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """Rank of this process in the default group, or 0 when not running distributed."""
    return dist.get_rank() if _initialized() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all processes along dim 0, in rank order, keeping autograd.

    Every process must pass a tensor of the same shape. The result's slice
    ``[rank * n:(rank + 1) * n]`` is this process's ``x``; in the backward pass the
    gradients that *all* processes computed for a slice are summed and sent back to the
    process that owns it (``torch.distributed.nn.functional.all_gather``, which works
    with NCCL and with gloo on CPU).

    Why not ``accelerator.gather`` / ``dist.all_gather``: those are plain collectives
    that write into fresh tensors, so the gathered rows carry no ``grad_fn``. A
    contrastive loss built on them only differentiates through the local rows; the
    gradient that process ``s``'s loss sends to process ``r``'s embeddings (they appear
    as negatives in ``s``'s similarity matrix) is silently dropped. Training still runs,
    but the gradient is not that of the global-batch loss and the negatives only act as
    fixed targets. With this function, DDP's average of the per-process gradients equals
    the single-process gradient of the loss over the full global batch (provided every
    process normalises its loss by its local count, see ``functional``).

    Shapes:
        x: ``[n, ...]`` on every process.
        returns: ``[world_size * n, ...]``; ``x`` itself when the world size is 1.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_rows(x: Tensor) -> tuple[Tensor, int, float]:
    """Gather rows of possibly different counts from all processes, keeping autograd.

    Partially paired data (a row may lack a modality) gives every process its own number of
    pairs, so rows are padded to the largest count, gathered with :func:`gather_with_grad`
    and the padding is cut away again.

    Returns:
        ``(rows, offset, weight)``: all rows in rank order ``[N, ...]``; the index of this
        process's first row in them; and ``weight = n * world / N``, the factor that turns a
        mean over the local ``n`` rows into this process's share of the global mean, so that
        averaging over processes (what DDP does) gives the full-batch mean even when the
        counts differ (``weight`` is 1 when they are equal).

    Shapes:
        x: ``[n, ...]``, ``n`` may differ between processes and may be 0 (a process without pairs still
        takes part in the collectives; its padding keeps it in the autograd graph for the backward ones).
    """
    ws = world_size()
    if ws == 1:
        return x, 0, 1.0
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(ws)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    total = sum(sizes)
    if total == 0:  # every process agrees there is nothing to gather
        return x, 0, 0.0
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    parts = gather_with_grad(padded).split(max(sizes))
    rows = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
    return rows, sum(sizes[: rank()]), x.shape[0] * ws / max(total, 1)
