"""Matryoshka representation learning (Kusupati et al. 2022) as a wrapper of any two-input embedding loss.

The loss is averaged over nested prefixes of the embeddings (the first 16, 32, ... dimensions), so every prefix
is a usable embedding on its own: a user can truncate the embedding to the width their index affords.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor


def nested_widths(widths: Sequence[int], full: int) -> list[int]:
    """The sorted distinct widths, with the full width added if missing; each must be in [1, full]."""
    bad = [w for w in widths if not 1 <= w <= full]
    if bad:
        raise ValueError(f"matryoshka widths {bad} are outside 1..{full} (the embedding width)")
    return sorted({*widths, full})


def matryoshka_loss(
    loss: Callable[[Tensor, Tensor], dict[str, Tensor]],
    a: Tensor,
    b: Tensor,
    widths: Sequence[int],
    normalize: bool = True,
) -> dict[str, Tensor]:
    """``loss`` on the first ``w`` dimensions of ``a`` and ``b`` for every nested width, averaged.

    Args:
        loss: Two embeddings -> terms with a ``loss`` (e.g. ``clip_loss`` with its scale bound).
        a: First embeddings.
        b: Second embeddings (row i pairs with ``a[i]``).
        widths: Nested widths; the full width is always included. Empty: just ``loss(a, b)``.
        normalize: L2-normalise each prefix (losses that expect unit vectors, as CLIP's).

    Returns:
        ``loss`` (the mean over widths), ``loss@w`` per width (detached) and the other terms of the full width.

    Shapes:
        a, b: [n, E] -> scalars.
    """
    if not widths:
        return loss(a, b)
    widths = nested_widths(widths, a.shape[-1])
    terms: dict[str, Tensor] = {}
    total: Tensor | None = None
    for w in widths:
        pa, pb = a[:, :w], b[:, :w]
        if normalize:
            pa, pb = F.normalize(pa, dim=-1), F.normalize(pb, dim=-1)
        out = loss(pa, pb)
        total = out["loss"] if total is None else total + out["loss"]
        terms[f"loss@{w}"] = out["loss"].detach()
        if w == widths[-1]:
            terms.update({k: v for k, v in out.items() if k != "loss"})
    assert total is not None
    terms["loss"] = total / len(widths)
    return terms
