"""Patchify / unpatchify series in the encoder's token order, token padding masks and per-patch target norms.

Tokens are **channel-major**: token ``c * N + n`` is patch ``n`` (time steps ``n * P .. (n + 1) * P - 1``) of
channel ``c``, with N patches per channel. ``TokenEmbedder`` uses the same order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def patchify(values: Tensor, patch_len: int) -> Tensor:
    """Cut every channel into non-overlapping patches, channel-major.

    Shapes:
        values: [B, C, L] with L divisible by ``patch_len`` -> [B, C * N, P], N = L / P.
    """
    b, c, length = values.shape
    if length % patch_len:
        raise ValueError(f"series length {length} is not divisible by patch_len {patch_len}; collate pads it")
    return values.reshape(b, c * (length // patch_len), patch_len)


def unpatchify(patches: Tensor, channels: int) -> Tensor:
    """Inverse of ``patchify``.

    Shapes:
        patches: [B, C * N, P] -> [B, C, N * P]
    """
    b, tokens, p = patches.shape
    if tokens % channels:
        raise ValueError(f"{tokens} tokens cannot be split into {channels} channels")
    return patches.reshape(b, channels, (tokens // channels) * p)


def token_padding_mask(lengths: Tensor, channels: int, num_patches: int, patch_len: int) -> Tensor:
    """True at the tokens that hold no real time step (patch ``n`` of a row of length l: n * P >= l).

    A patch that is only partly real (the last one when l is not a multiple of P) is a real token; its tail
    holds zeros.

    Shapes:
        lengths: [B] long -> [B, C * N] bool, channel-major.
    """
    starts = torch.arange(num_patches, device=lengths.device) * patch_len
    per_channel = starts[None, :] >= lengths[:, None]  # [B, N]
    return per_channel.repeat(1, channels)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise every patch to zero mean and unit variance: (x - mean) / sqrt(var + eps).

    As in MAE's ``norm_pix_loss`` the variance is the unbiased one (divisor P - 1) over the last dimension.

    Shapes:
        patches: [..., P] -> [..., P]
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()
