"""Token masks shared by plugins: random token dropping with a fixed number kept per row."""

from __future__ import annotations

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
