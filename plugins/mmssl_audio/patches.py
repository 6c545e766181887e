"""Mel patches in the encoder's token order, and the token padding mask of padded batches.

Token order is **time-major**: the patch at time index ``t`` and frequency index ``f`` is token
``n = t * freq_patches + f``, so the tokens of a clip's first seconds come first and the padding of a short clip
in a batch is a contiguous run of tokens at the end. ``AudioPatchEmbedder`` uses the same order. Each patch
vector is the (patch_freq, patch_time) block flattened: index ``i * patch_time + j`` holds mel bin ``i`` and
frame ``j`` of the patch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def patchify(mel: Tensor, patch_freq: int, patch_time: int) -> Tensor:
    """Cut spectrograms into flattened patches, time-major.

    Shapes:
        mel: [B, 1, F, T] (or [B, F, T]) with F, T divisible by the patch sizes -> [B, (T/pt) * (F/pf), pf * pt]
    """
    if mel.ndim == 4:
        mel = mel[:, 0]
    b, f, t = mel.shape
    if f % patch_freq or t % patch_time:
        raise ValueError(f"spectrogram {f}x{t} is not divisible by the patch size {patch_freq}x{patch_time}")
    gf, gt = f // patch_freq, t // patch_time
    x = mel.reshape(b, gf, patch_freq, gt, patch_time)
    return x.permute(0, 3, 1, 2, 4).reshape(b, gt * gf, patch_freq * patch_time)


def unpatchify(patches: Tensor, patch_freq: int, patch_time: int, freq_patches: int) -> Tensor:
    """Inverse of ``patchify``.

    Shapes:
        patches: [B, gt * gf, pf * pt] -> [B, 1, gf * pf, gt * pt]
    """
    b, n, _ = patches.shape
    gt = n // freq_patches
    x = patches.reshape(b, gt, freq_patches, patch_freq, patch_time)
    return x.permute(0, 2, 3, 1, 4).reshape(b, 1, freq_patches * patch_freq, gt * patch_time)


def frame_padding(lengths: Tensor, frames: int) -> Tensor:
    """Frame-level padding. Shapes: lengths [B] (valid frames per row) -> [B, frames] bool, True at padding."""
    return torch.arange(frames, device=lengths.device)[None, :] >= lengths[:, None]


def token_padding(lengths: Tensor, frames: int, patch_time: int, freq_patches: int) -> Tensor:
    """Token-level padding: a token is padding when every frame of its patch is padding.

    Shapes:
        lengths [B] -> [B, (frames / patch_time) * freq_patches] bool (time-major, True at padding)
    """
    starts = torch.arange(0, frames, patch_time, device=lengths.device)  # first frame of each time patch
    pad = starts[None, :] >= lengths[:, None]  # [B, gt]
    return pad.repeat_interleave(freq_patches, dim=1)


def zero_padding(mel: Tensor, lengths: Tensor) -> Tensor:
    """Set the frames past each row's length to 0, so nothing in the padding reaches the encoder or the targets.

    Shapes:
        mel: [B, 1, F, T], lengths [B] -> [B, 1, F, T]
    """
    keep = ~frame_padding(lengths, mel.shape[-1])
    return mel * keep[:, None, None, :].to(mel.dtype)
