"""A dilated convolutional series encoder (TS2Vec-style): residual blocks of dilated 1-D convolutions.

Channels are encoded independently (as the patch transformer's tokens are), then each channel's time features are
averaged over every patch, so the tokens are the transformer's: token ``c * N + n`` is patch ``n`` of channel ``c``
(``mmssl_timeseries.patches.patchify``'s order). Masked objectives therefore work unchanged: hidden patches are
zeroed in the input before the convolutions and only the kept tokens are returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoders.transformer import gather_tokens, masked_mean
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl_timeseries.encoder import series_values


class DilatedBlock(nn.Module):
    """Two dilated 'same' convolutions with GELU and a residual connection (TS2Vec's ``ConvBlock``).

    Args:
        width: Channels in and out.
        dilation: Dilation of both convolutions (kernel 3).
    """

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x [B, D, L] -> [B, D, L]."""
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class DilatedConvEncoder(nn.Module):
    """Input projection, ``depth`` dilated blocks (dilation 1, 2, 4, ...), patch pooling, a channel embedding and a
    final LayerNorm.

    Args:
        channels: Channels C.
        patch_len: Time steps per token P.
        width: Token width D.
        depth: Dilated blocks; the receptive field is about 2 ** (depth + 2) steps.
    """

    def __init__(self, channels: int, patch_len: int, width: int, depth: int) -> None:
        super().__init__()
        self.channels, self.patch_len, self.width = channels, patch_len, width
        self.input = nn.Conv1d(1, width, 1)
        self.blocks = nn.Sequential(*(DilatedBlock(width, 2**i) for i in range(depth)))
        self.channel_embedding = nn.Parameter(torch.zeros(channels, width))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.channel_embedding, std=0.02)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Encode series; with ``batch.keep``, hidden patches are zeroed and only kept tokens are returned.

        Shapes:
            batch.data["values"] [B, C, L] (L divisible by P), padding_mask [B, C * N], keep [B, K]
            -> tokens [B, K or C * N, D], pooled [B, D] (mean over kept, non-padding tokens).
        """
        values = series_values(batch.data)
        b, c, length = values.shape
        if c != self.channels:
            raise ValueError(f"time-series batch has {c} channels, the encoder was built for {self.channels}")
        n = length // self.patch_len
        if batch.keep is not None:
            visible = torch.zeros(b, c * n, device=values.device, dtype=values.dtype).scatter_(1, batch.keep, 1.0)
            values = values * visible.view(b, c, n).repeat_interleave(self.patch_len, dim=2)
        x = self.blocks(self.input(values.reshape(b * c, 1, length)))  # [B * C, D, L]
        x = F.avg_pool1d(x, self.patch_len).view(b, c, self.width, n).permute(0, 1, 3, 2)  # [B, C, N, D]
        tokens = self.norm(x + self.channel_embedding[None, :, None, :]).reshape(b, c * n, self.width)
        padding = batch.padding_mask
        if batch.keep is not None:
            tokens = gather_tokens(tokens, batch.keep)
            padding = None if padding is None else torch.gather(padding, 1, batch.keep)
        return EncoderOutput(tokens=tokens, pooled=masked_mean(tokens, padding), padding_mask=padding)
