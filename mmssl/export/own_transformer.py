"""Reading mmssl's own transformer encoders (``mmssl.encoders.transformer.TransformerEncoder``) for export.

The library formats (timm, open_clip, transformers) hold the same computation under other parameter names. This
module recognises the two token embedders they can express, by structure rather than by modality name:

- a *patch* embedder (a ViT stem): ``proj`` a ``Conv2d`` with stride = kernel, fixed ``positions`` [1, N, D] and
  ``grid``; as the image plugin's ``PatchEmbedder``;
- a *word* embedder: ``word`` an ``nn.Embedding``, learned ``position`` [1, L, D] and ``pad_id``; as the text
  plugin's ``TokenEmbedder``;

and lists the blocks in a neutral form (``BlockWeights``) that each format renames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmssl.encoders.transformer import TransformerEncoder


class NotExportable(ValueError):
    """The encoder is not one a library format can hold exactly; the message says why and what works instead."""


@dataclass(frozen=True)
class BlockWeights:
    """One pre-norm block: x + proj(attn(norm1(x))); x + fc2(gelu(fc1(norm2(x)))). Tensors keep torch's layout
    ([out, in] weights); ``qkv_weight`` [3D, D] holds q, k, v stacked, heads contiguous within each."""

    norm1_weight: Tensor
    norm1_bias: Tensor
    qkv_weight: Tensor
    qkv_bias: Tensor
    proj_weight: Tensor
    proj_bias: Tensor
    norm2_weight: Tensor
    norm2_bias: Tensor
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_bias: Tensor


@dataclass(frozen=True)
class OwnTransformer:
    """The neutral description of an own transformer encoder.

    Attributes:
        width: Token width D.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_hidden: Hidden width of each block's MLP.
        pool: ``cls`` or ``mean``.
        cls_token: [D] learned class token (no position is added to it), or None.
        blocks: The blocks, input to output.
        norm_weight: Final LayerNorm weight [D]. ``norm_bias`` its bias.
        norm_eps: LayerNorm epsilon of every norm.
    """

    width: int
    depth: int
    heads: int
    mlp_hidden: int
    pool: str
    cls_token: Tensor | None
    blocks: tuple[BlockWeights, ...]
    norm_weight: Tensor
    norm_bias: Tensor
    norm_eps: float


@dataclass(frozen=True)
class PatchStem:
    """A ViT stem. Shapes: conv_weight [D, C, p, p]; conv_bias [D]; positions [N, D] (row-major patch grid)."""

    channels: int
    patch_size: int
    image_size: int
    conv_weight: Tensor
    conv_bias: Tensor
    positions: Tensor


@dataclass(frozen=True)
class WordStem:
    """A text stem. Shapes: word [V, D]; positions [L, D] (L = max_length)."""

    vocab_size: int
    max_length: int
    pad_id: int
    word: Tensor
    positions: Tensor


def _t(x: Tensor) -> Tensor:
    return x.detach().float().cpu().clone()


def read_transformer(encoder: nn.Module, modality: str) -> OwnTransformer:
    """The blocks and pooling of an own ``TransformerEncoder``.

    Raises:
        NotExportable: ``encoder`` is not mmssl's own transformer encoder.
    """
    if not isinstance(encoder, TransformerEncoder):
        raise NotExportable(
            f"modality {modality!r} uses {type(encoder).__name__}, not mmssl's own transformer encoder; "
            "use --format torch_export (any encoder) or the format of its library"
        )
    blocks = []
    for block in encoder.transformer.blocks:
        fc1, act, fc2 = block.mlp
        if not isinstance(act, nn.GELU) or act.approximate != "none":
            raise NotExportable(f"modality {modality!r}: block activation {act} is not exact GELU")
        blocks.append(
            BlockWeights(
                _t(block.norm1.weight), _t(block.norm1.bias), _t(block.attn.qkv.weight), _t(block.attn.qkv.bias),
                _t(block.attn.proj.weight), _t(block.attn.proj.bias), _t(block.norm2.weight), _t(block.norm2.bias),
                _t(fc1.weight), _t(fc1.bias), _t(fc2.weight), _t(fc2.bias),
            )  # fmt: skip
        )
    first = encoder.transformer.blocks[0] if len(encoder.transformer.blocks) else None
    norm = encoder.transformer.norm
    return OwnTransformer(
        width=int(encoder.width),
        depth=len(blocks),
        heads=int(first.attn.heads) if first is not None else 1,
        mlp_hidden=int(first.mlp[0].out_features) if first is not None else 4 * int(encoder.width),
        pool=encoder.pool,
        cls_token=None if encoder.cls_token is None else _t(encoder.cls_token.reshape(-1)),
        blocks=tuple(blocks),
        norm_weight=_t(norm.weight),
        norm_bias=_t(norm.bias),
        norm_eps=float(norm.eps),
    )


def read_patch_stem(encoder: nn.Module, modality: str) -> PatchStem:
    """The ViT stem of an own image-like encoder (conv patches + fixed positions).

    Raises:
        NotExportable: The embedder is not a square-patch convolution with a fixed position grid.
    """
    embedder = getattr(encoder, "embedder", None)
    proj = getattr(embedder, "proj", None)
    positions = getattr(embedder, "positions", None)
    grid = getattr(embedder, "grid", None)
    if not isinstance(proj, nn.Conv2d) or not isinstance(positions, Tensor) or grid is None:
        raise NotExportable(
            f"modality {modality!r}: its token embedder {type(embedder).__name__} is not a ViT patch stem "
            "(Conv2d patches + fixed positions); use --format torch_export"
        )
    p = proj.kernel_size[0]
    if proj.kernel_size != (p, p) or proj.stride != (p, p) or proj.padding != (0, 0) or grid[0] != grid[1]:
        raise NotExportable(f"modality {modality!r}: the patch convolution {proj} is not square non-overlapping")
    return PatchStem(
        channels=int(proj.in_channels),
        patch_size=int(p),
        image_size=int(grid[0] * p),
        conv_weight=_t(proj.weight),
        conv_bias=_t(proj.bias) if proj.bias is not None else torch.zeros(proj.out_channels),
        positions=_t(positions.reshape(-1, positions.shape[-1])),
    )


def read_word_stem(encoder: nn.Module, modality: str) -> WordStem:
    """The stem of an own text-like encoder (word + learned absolute position embeddings, no embedding norm).

    Raises:
        NotExportable: The embedder is not of that kind.
    """
    embedder = getattr(encoder, "embedder", None)
    word = getattr(embedder, "word", None)
    position = getattr(embedder, "position", None)
    if not isinstance(word, nn.Embedding) or not isinstance(position, Tensor) or not hasattr(embedder, "pad_id"):
        raise NotExportable(
            f"modality {modality!r}: its token embedder {type(embedder).__name__} is not a word + position "
            "embedder; use --format torch_export"
        )
    return WordStem(
        vocab_size=int(word.num_embeddings),
        max_length=int(position.shape[1]),
        pad_id=int(embedder.pad_id),
        word=_t(word.weight),
        positions=_t(position.reshape(-1, position.shape[-1])),
    )


def projection_matrix(projection: nn.Module, modality: str) -> Tensor | None:
    """The run's projection into the shared space as an [E, D] matrix; None for an identity projection.

    Raises:
        NotExportable: The projection is not a bias-free linear map.
    """
    if isinstance(projection, nn.Identity):
        return None
    if not isinstance(projection, nn.Linear) or projection.bias is not None:
        raise NotExportable(f"modality {modality!r}: its projection {projection} is not a linear map without bias")
    return _t(projection.weight)
