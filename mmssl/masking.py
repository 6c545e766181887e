"""Token masks shared by plugins and objectives: random token dropping with a fixed number kept per row, and
JEPA-style multi-block masks (a context block and target blocks, or spans for 1-D sequences)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def random_keep(
    batch_size: int,
    num_tokens: int,
    ratio: float,
    device: torch.device | str = "cpu",
    padding_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose the tokens to keep (MAE's random masking), the same count in every row.

    Padding tokens are ranked last, so they are hidden before real tokens are.

    Args:
        batch_size: B.
        num_tokens: N.
        ratio: Fraction of the N tokens to hide, in [0, 1).
        device: Device of the returned tensors.
        padding_mask: [B, N] bool, True at padding.
        generator: Random generator on ``device`` (None: the global one).

    Returns:
        keep [B, K] long indices (sorted ascending), mask [B, N] bool (True = hidden), K = round(N * (1 - ratio)).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    num_keep = max(1, round(num_tokens * (1.0 - ratio)))
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    if padding_mask is not None:
        noise = noise + padding_mask.to(noise.dtype) * 2.0
    keep = noise.argsort(dim=1)[:, :num_keep].sort(dim=1).values
    mask = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask


@dataclass
class BlockMasks:
    """JEPA-style masks of a batch: a context the student sees and target blocks it predicts.

    Attributes:
        keep: [B, K] long, sorted indices of the context tokens (the same count K in every row).
        target: [B, N] bool, True on the tokens of the target blocks.
        target_boxes: Per row, the target blocks as (top, left, height, width) on the token grid.
        context_boxes: Per row, the context block (top, left, height, width) before targets are removed.
    """

    keep: Tensor
    target: Tensor
    target_boxes: list[list[tuple[int, int, int, int]]]
    context_boxes: list[tuple[int, int, int, int]]


def sample_box(
    grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """A random block on a ``grid = (rows, cols)`` token grid: area share uniform in ``scale``, aspect ratio
    (height / width) log-uniform in ``aspect``; a grid of one row gives spans (height 1).

    Returns:
        (top, left, height, width), inside the grid.
    """
    rows, cols = grid

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    area = uniform(*scale) * rows * cols
    if rows == 1:
        h, w = 1, max(1, min(cols, round(area)))
    else:
        ratio = math.exp(uniform(math.log(aspect[0]), math.log(aspect[1])))
        h = max(1, min(rows, round(math.sqrt(area * ratio))))
        w = max(1, min(cols, round(math.sqrt(area / ratio))))
    top = int(torch.randint(0, rows - h + 1, (), generator=generator))
    left = int(torch.randint(0, cols - w + 1, (), generator=generator))
    return top, left, h, w


def box_mask(grid: tuple[int, int], box: tuple[int, int, int, int]) -> Tensor:
    """[rows * cols] bool, True inside ``box`` (row-major token order)."""
    rows, cols = grid
    top, left, h, w = box
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[top : top + h, left : left + w] = True
    return mask.flatten()


def block_masks(
    batch_size: int,
    grid: tuple[int, ...],
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> BlockMasks:
    """I-JEPA's multi-block masks: ``num_targets`` target blocks and one context block minus the targets.

    For a 2-D token grid (images) the blocks are rectangles; for a 1-D sequence (``grid = (N,)``) they are
    contiguous spans. Every row keeps the same number K of context tokens (the smallest context of the batch; the
    others are subsampled at random, as I-JEPA's collator does), at least one.

    Args:
        batch_size: B.
        grid: ``(rows, cols)`` in row-major token order, or ``(N,)``.
        num_targets: Target blocks per row (they may overlap).
        target_scale: Area share of each target block.
        target_aspect: Height / width range of the target blocks (2-D only).
        context_scale: Area share of the context block (aspect 1).
        generator: CPU random generator (None: a fresh one from torch's global generator).
        device: Device of the returned tensors.

    Shapes:
        -> keep [B, K], target [B, N] with N = prod(grid).
    """
    if len(grid) not in (1, 2):
        raise ValueError(f"block masks need a 1-D or 2-D token grid, got {grid}")
    shape = (1, int(grid[0])) if len(grid) == 1 else (int(grid[0]), int(grid[1]))
    gen = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    targets, contexts, target_boxes, context_boxes = [], [], [], []
    for _ in range(batch_size):
        boxes = [sample_box(shape, target_scale, target_aspect, gen) for _ in range(num_targets)]
        target = torch.stack([box_mask(shape, b) for b in boxes]).any(0)
        context_box = sample_box(shape, context_scale, (1.0, 1.0), gen)
        context = box_mask(shape, context_box) & ~target
        if not context.any():  # the targets cover the context block: keep one other token
            free = (~target).nonzero().flatten()
            pool = free if len(free) else torch.arange(len(target))
            context[pool[int(torch.randint(0, len(pool), (), generator=gen))]] = True
        targets.append(target)
        contexts.append(context)
        target_boxes.append(boxes)
        context_boxes.append(context_box)
    count = min(int(c.sum()) for c in contexts)
    keep = []
    for context in contexts:
        index = context.nonzero().flatten()
        chosen = index[torch.randperm(len(index), generator=gen)[:count]]
        keep.append(chosen.sort().values)
    return BlockMasks(torch.stack(keep).to(device), torch.stack(targets).to(device), target_boxes, context_boxes)
