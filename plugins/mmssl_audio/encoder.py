"""The audio encoder: an AST/SSAST-style patch embedder over the log-mel spectrogram and the shared transformer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmssl.encoders.transformer import TransformerEncoder, sincos_positions_2d
from mmssl_audio.options import AudioOptions
from mmssl_audio.patches import token_padding, zero_padding


class AudioPatchEmbedder(nn.Module):
    """Project non-overlapping (freq, time) mel patches to tokens and add fixed 2-D sine-cosine positions.

    Tokens are time-major (token ``t * freq_patches + f``), matching ``mmssl_audio.patches.patchify``; the
    positions are computed for the batch's actual grid (time patches x frequency patches), so clips of any
    length get the same position for the same time.

    Frames past each row's length are zeroed before the projection and patches made only of padding are
    marked as padding tokens, so what lies in the padding never changes the output.

    Args:
        patch_freq: Mel bins per patch (convolution kernel and stride along frequency).
        patch_time: Frames per patch (along time).
        width: Token width D (divisible by 4).
    """

    def __init__(self, patch_freq: int, patch_time: int, width: int) -> None:
        super().__init__()
        self.patch_freq, self.patch_time, self.width = patch_freq, patch_time, width
        self.proj = nn.Conv2d(1, width, kernel_size=(patch_freq, patch_time), stride=(patch_freq, patch_time))
        self._positions: dict[tuple[int, int], Tensor] = {}
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))  # MAE: like a linear layer over the patch
        nn.init.zeros_(self.proj.bias)

    def positions(self, time_patches: int, freq_patches: int, device: torch.device) -> Tensor:
        """Shapes: -> [time_patches * freq_patches, D] (time-major; cached per grid, not in the state dict)."""
        if not (type(time_patches) is int and type(freq_patches) is int):  # symbolic sizes (torch.export): no cache
            return sincos_positions_2d(time_patches, freq_patches, self.width).to(device)
        key = (time_patches, freq_patches)
        cached = self._positions.get(key)
        if cached is None or cached.device != device:
            cached = sincos_positions_2d(time_patches, freq_patches, self.width).to(device)
            self._positions[key] = cached
        return cached

    def forward(self, data: Any) -> tuple[Tensor, Tensor]:
        """Embed patches.

        Args:
            data: ``{"mel": [B, 1, F, T], "lengths": [B]}`` as collated (``lengths``: valid frames per row;
                missing means no padding), or a bare mel tensor [B, 1, F, T] / [B, F, T].

        Shapes:
            -> tokens [B, (T/pt) * (F/pf), D], padding mask [B, (T/pt) * (F/pf)] bool (True = padding)
        """
        mel, lengths = (data["mel"], data.get("lengths")) if isinstance(data, dict) else (data, None)
        if mel.ndim == 3:
            mel = mel[:, None]
        b, _, f, t = mel.shape
        pf, pt = self.patch_freq, self.patch_time
        if f % pf or t % pt:
            raise ValueError(f"spectrogram {f}x{t} is not divisible by the patch size {pf}x{pt}")
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=mel.device)
        mel = zero_padding(mel, lengths)
        x = self.proj(mel)  # [B, D, F/pf, T/pt]
        gf, gt = x.shape[-2:]
        x = x.permute(0, 3, 2, 1).reshape(b, gt * gf, self.width)  # time-major
        x = x + self.positions(gt, gf, x.device).to(x.dtype)[None]
        return x, token_padding(lengths, t, pt, gf)


def build_encoder(options: AudioOptions, processor: object | None = None) -> TransformerEncoder:
    """An audio spectrogram transformer: ``TransformerEncoder(AudioPatchEmbedder(...), width, depth, ...)``.

    The processor is not needed (the architecture depends on the options only); it is accepted for the
    plugin contract.
    """
    embedder = AudioPatchEmbedder(options.patch_freq, options.patch_time, options.width)
    return TransformerEncoder(
        embedder,
        width=options.width,
        depth=options.depth,
        heads=options.heads,
        mlp_ratio=options.mlp_ratio,
        dropout=options.dropout,
        pool=options.pool,
    )
