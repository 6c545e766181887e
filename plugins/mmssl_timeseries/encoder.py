"""The time-series encoder: a PatchTST-style patch embedder and the shared transformer.

Channel independence (PatchTST) is kept in the *tokens*: every token is one patch of one channel, embedded by
a Linear(patch_len -> width) shared by all channels, plus a learned embedding of its channel and the 1-D
sine-cosine position of its patch within the channel. Attention then runs over all C * N tokens of a series
(channels are not folded into the batch), which lets channels inform each other, keeps ``keep`` indices and
padding masks plain indices into one token axis, and reuses ``TransformerEncoder`` unchanged. For
univariate series the two designs are the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmssl.encoders.transformer import TransformerEncoder, sincos_positions
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl_timeseries.options import TimeSeriesOptions
from mmssl_timeseries.patches import patchify


def series_values(data: Any) -> Tensor:
    """The [B, C, L] values of a batch's ``data`` (``{"values": tensor}`` or the tensor itself)."""
    values = data["values"] if isinstance(data, dict) else data
    if not isinstance(values, Tensor) or values.ndim != 3:
        raise ValueError(f"time-series batch data must hold a [B, C, L] tensor under 'values', got {type(data)}")
    return values


class TokenEmbedder(nn.Module):
    """Embed non-overlapping patches of each channel separately (channel-major token order).

    Token ``c * N + n`` is patch ``n`` of channel ``c`` (the order of ``mmssl_timeseries.patches.patchify``):
    ``Linear(patch)`` + ``channel_embedding[c]`` + ``sincos(n)``.

    Args:
        channels: Channels C.
        patch_len: Time steps per patch P.
        width: Token width D (even).
    """

    def __init__(self, channels: int, patch_len: int, width: int) -> None:
        super().__init__()
        self.channels, self.patch_len, self.width = channels, patch_len, width
        self.proj = nn.Linear(patch_len, width)
        self.channel_embedding = nn.Parameter(torch.zeros(channels, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        nn.init.normal_(self.channel_embedding, std=0.02)

    def forward(self, data: Any) -> tuple[Tensor, None]:
        """Embed patches; the padding mask comes from the batch (``collate``).

        Shapes:
            data["values"]: [B, C, L] with L divisible by P -> tokens [B, C * N, D]; padding mask: None.
        """
        values = series_values(data)
        b, c, length = values.shape
        if c != self.channels:
            raise ValueError(f"time-series batch has {c} channels, the encoder was built for {self.channels}")
        n = length // self.patch_len
        x = self.proj(patchify(values, self.patch_len)).view(b, c, n, self.width)
        x = x + self.channel_embedding[None, :, None, :].to(x.dtype)
        x = x + sincos_positions(n, self.width, x.device).to(x.dtype)[None, None]
        return x.reshape(b, c * n, self.width), None


def channel_means(tokens: Tensor, padding: Tensor | None, index: Tensor | None, channels: int, n: int) -> Tensor:
    """The mean of each channel's (kept, non-padding) tokens, concatenated channel by channel.

    Args:
        tokens: Encoder output tokens (kept ones only when ``index`` is given).
        padding: True on padding tokens, or None.
        index: Position of each token in the full channel-major order (``batch.keep``), or None for all of them.
        channels: Channels C.
        n: Patches per channel in the full order.

    Shapes:
        tokens [B, K, D], padding [B, K], index [B, K] -> [B, C * D] (a channel with no token gives 0).
    """
    b, k, d = tokens.shape
    position = torch.arange(k, device=tokens.device).expand(b, k) if index is None else index
    owner = torch.div(position, n, rounding_mode="floor")  # [B, K] channel of each token
    weight = torch.ones(b, k, dtype=tokens.dtype, device=tokens.device)
    if padding is not None:
        weight = weight * (~padding).to(tokens.dtype)
    one_hot = torch.nn.functional.one_hot(owner, channels).to(tokens.dtype) * weight[..., None]  # [B, K, C]
    sums = one_hot.transpose(1, 2) @ tokens  # [B, C, D]
    counts = one_hot.sum(1)[..., None]  # [B, C, 1]
    return (sums / counts.clamp_min(1.0)).flatten(1)


class ChannelPooledEncoder(nn.Module):
    """``TransformerEncoder`` (mean pooling) whose pooled embedding keeps one mean per channel (``pool: channels``).

    Attributes:
        pooled_width: ``channels * width``.
    """

    def __init__(self, encoder: TransformerEncoder, channels: int, patch_len: int) -> None:
        super().__init__()
        self.encoder, self.channels, self.patch_len = encoder, channels, patch_len
        self.width = encoder.width
        self.pooled_width = channels * encoder.width

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        out = self.encoder(batch)
        n = series_values(batch.data).shape[-1] // self.patch_len
        pooled = channel_means(out.tokens, out.padding_mask, batch.keep, self.channels, n)
        return EncoderOutput(tokens=out.tokens, pooled=pooled, padding_mask=out.padding_mask)

    def forward_layers(self, batch: ModalityBatch) -> list[Tensor]:
        return self.encoder.forward_layers(batch)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return self.encoder.layer_stack()


def build_encoder(options: TimeSeriesOptions, processor: object | None = None) -> nn.Module:
    """``TransformerEncoder(TokenEmbedder(...), width, depth, heads, ...)`` for ``options``, or the dilated
    convolutional encoder (``encoder: dilated``, ``mmssl_timeseries.dilated``).

    The pooled output is the class token or the mean over all non-padding tokens of all channels (``pool``).
    The processor is not needed (the architecture depends on the options only); it is accepted for the plugin
    contract.
    """
    if options.encoder == "dilated":
        from mmssl_timeseries.dilated import DilatedConvEncoder  # it imports series_values from here

        return DilatedConvEncoder(options.channels, options.patch_len, options.width, options.depth)
    embedder = TokenEmbedder(options.channels, options.patch_len, options.width)
    encoder = TransformerEncoder(
        embedder,
        width=options.width,
        depth=options.depth,
        heads=options.heads,
        mlp_ratio=options.mlp_ratio,
        dropout=options.dropout,
        pool="mean" if options.pool == "channels" else options.pool,
    )
    embedder.reset_parameters()  # TransformerEncoder re-initialises every Linear; patches get Xavier (as MAE)
    if options.pool == "channels":
        return ChannelPooledEncoder(encoder, options.channels, options.patch_len)
    return encoder
