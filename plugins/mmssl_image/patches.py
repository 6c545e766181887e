"""Patchify / unpatchify images in the encoder's token order, and per-patch normalisation of targets.

Patches are ordered row-major over the patch grid (patch ``n = row * grid_w + col``), the same order as the
tokens of ``PatchEmbedder``. Each patch vector is the (p, p, C) block flattened: index
``(i * p + j) * C + c`` holds pixel row ``i``, column ``j``, channel ``c`` of the patch (MAE's layout).
"""

from __future__ import annotations

from torch import Tensor


def patchify(images: Tensor, patch: int) -> Tensor:
    """Cut images into flattened patches.

    Shapes:
        images: [B, C, H, W] with H and W divisible by ``patch`` -> [B, (H/p) * (W/p), p * p * C]
    """
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of ``patchify``.

    Shapes:
        patches: [B, gh * gw, p * p * C] -> [B, C, gh * p, gw * p]
    """
    gh, gw = grid
    b = patches.shape[0]
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise every patch vector to zero mean and unit variance: (x - mean) / sqrt(var + eps).

    As in MAE's ``norm_pix_loss``, the variance is the unbiased one (divisor P - 1) over the last dimension.

    Shapes:
        patches: [..., P] -> [..., P]
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()
