"""A pre-norm transformer over tokens, shared by every token-based modality.

A modality supplies a *token embedder* (pixels -> patch tokens, ids -> word tokens, ...) that returns token
features with positions already added; this module adds an optional class token, drops hidden tokens for
masked training (MAE's visible-only path), runs the blocks and pools.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.modality import EncoderOutput, ModalityBatch

#: LayerNorm epsilon of every block and the final norm: timm's ViT value, so an exported ViT is exact in timm
#: (whose ``norm_layer`` cannot be given another epsilon from a config file); open_clip and transformers read it.
NORM_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Shapes: x [B, N, D]; attn_mask [B, 1, 1, N] bool, True where attending is allowed."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, eps=NORM_EPS)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of blocks followed by a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=NORM_EPS)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Shapes: x [B, N, D]; padding_mask [B, N] bool (True = padding) -> [B, N, D]."""
        attn_mask = None if padding_mask is None else (~padding_mask)[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Select tokens per row. Shapes: x [B, N, D], index [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over non-padding tokens. Shapes: x [B, N, D], padding_mask [B, N] -> [B, D]."""
    if padding_mask is None:
        return x.mean(1)
    weight = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * weight).sum(1) / weight.sum(1).clamp_min(1.0)


class TransformerEncoder(nn.Module):
    """Token embedder + optional class token + transformer + pooling.

    Args:
        embedder: Module mapping ``batch.data`` to ``(tokens [B, N, D], padding_mask [B, N] | None)`` with
            positions already added.
        width: Token width D.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: Hidden width of the MLP relative to D.
        dropout: Dropout inside blocks (also what makes SimCSE-style text views differ).
        pool: ``"cls"`` (class token) or ``"mean"`` (mean of non-padding tokens).
    """

    def __init__(
        self,
        embedder: nn.Module,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pool: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.width = width
        self.pool = pool
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pool == "cls" else None
        self.transformer = Transformer(width, depth, heads, mlp_ratio, dropout)
        self.apply(_init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def _input_tokens(self, batch: ModalityBatch) -> tuple[Tensor, Tensor | None]:
        """Embedded (kept) tokens with the class token prepended, and their padding mask."""
        tokens, padding = self.embedder(batch.data)
        if padding is None:
            padding = batch.padding_mask
        if batch.keep is not None:
            tokens = gather_tokens(tokens, batch.keep)
            padding = None if padding is None else torch.gather(padding, 1, batch.keep)
        if self.cls_token is not None:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
            tokens = torch.cat([cls, tokens], dim=1)
            if padding is not None:
                padding = F.pad(padding, (1, 0), value=False)
        return tokens, padding

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        tokens, padding = self._input_tokens(batch)
        x = self.transformer(tokens, padding)
        if self.cls_token is not None:
            pooled, x = x[:, 0], x[:, 1:]
            padding = None if padding is None else padding[:, 1:]
        else:
            pooled = masked_mean(x, padding)
        return EncoderOutput(tokens=x, pooled=pooled, padding_mask=padding)

    def forward_layers(self, batch: ModalityBatch) -> list[Tensor]:
        """The token output of every block (the residual stream, before the final norm), without the class token.

        For targets built from intermediate layers (data2vec); ``forward`` is unchanged by it.

        Shapes:
            -> ``depth`` tensors [B, N', D] (N' the kept tokens, as ``EncoderOutput.tokens``).
        """
        x, padding = self._input_tokens(batch)
        attn_mask = None if padding is None else (~padding)[:, None, None, :]
        start = 1 if self.cls_token is not None else 0
        outputs = []
        for block in self.transformer.blocks:
            x = block(x, attn_mask)
            outputs.append(x[:, start:])
        return outputs

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """``(stem, blocks)``: the token embedder, and the blocks from input to output (layer-wise lr decay)."""
        return [self.embedder], list(self.transformer.blocks)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def sincos_positions(n: int, width: int, device: torch.device | None = None) -> Tensor:
    """Fixed 1-D sine-cosine position embedding. Shapes: -> [n, width]."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    emb = torch.zeros(n, width, device=device)
    emb[:, 0::2] = torch.sin(pos * freq)
    emb[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return emb


def sincos_positions_2d(grid_h: int, grid_w: int, width: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE). Shapes: -> [grid_h * grid_w, width]."""
    if width % 4:
        raise ValueError(f"2-D sine-cosine positions need a width divisible by 4, got {width}")
    rows = sincos_positions(grid_h, width // 2)
    cols = sincos_positions(grid_w, width // 2)
    grid = torch.cat([rows[:, None, :].expand(-1, grid_w, -1), cols[None, :, :].expand(grid_h, -1, -1)], dim=-1)
    return grid.reshape(grid_h * grid_w, width)
