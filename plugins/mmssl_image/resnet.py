"""A small ResNet for small images: convolutions learn from little data where a ViT's patch tokens struggle.

The encoder returns one token per cell of the input's patch grid (``H / patch_size`` by ``W / patch_size``), the
same token order as ``mmssl_image.patches.patchify``, so masked objectives work unchanged. With ``sparse_masking``
(SparK, Tian et al. 2023) a masked image is encoded as if its hidden patches were not there: they are 0 after
every layer and left out of every GroupNorm's statistics; without it they are only zeroed in the input (the
normalised mean). Only the kept cells are returned as tokens. The pooled embedding is the mean of the returned
tokens, or with ``pool_levels`` a spatial pyramid of region means (``pyramid_pool``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoders.transformer import gather_tokens
from mmssl.modality import EncoderOutput, ModalityBatch


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: per-sample statistics, so a row's embedding never depends on the other rows
    of its batch or on the process it runs on (batch norm would make DDP and single-process runs differ)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def masked_group_norm(x: Tensor, visible: Tensor, norm: nn.GroupNorm) -> Tensor:
    """``norm`` with its statistics taken over the visible positions only (SparK's sparse normalisation); hidden
    positions come out 0.

    Shapes: x [B, C, H, W], visible [B, 1, H, W] (1 visible, 0 hidden) -> [B, C, H, W] in x's dtype (the
    statistics are taken in float32, as ``nn.GroupNorm``'s under autocast).
    """
    b, c = x.shape[:2]
    groups = norm.num_groups
    x = x * visible.to(x.dtype)
    grouped = x.reshape(b, groups, -1).float()
    count = (visible.reshape(b, 1, -1).float().sum(-1, keepdim=True) * (c // groups)).clamp_min(1.0)
    mean = grouped.sum(-1, keepdim=True) / count
    var = (grouped.square().sum(-1, keepdim=True) / count - mean.square()).clamp_min(0.0)
    scale = torch.rsqrt(var + norm.eps).expand(b, groups, c // groups).reshape(b, c) * norm.weight.float()
    shift = norm.bias.float() - mean.expand(b, groups, c // groups).reshape(b, c) * scale
    out = torch.addcmul(shift[..., None, None], grouped.view(x.shape), scale[..., None, None]) * visible
    return out.to(x.dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with group norm and a residual connection (ResNet-18's block).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(out_channels)
        nn.init.zeros_(self.norm2.weight)  # each block starts as the identity (Goyal et al. 2017)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), group_norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))

    def forward_sparse(self, x: Tensor, visible: Tensor) -> Tensor:
        """``forward`` of a masked input whose hidden positions stay 0 (``masked_group_norm``).

        Both branches are 0 at hidden positions (the identity shortcut because ``x``, at the same resolution, is
        already), so their sum needs no mask of its own.

        Shapes: x [B, C_in, H, W], visible [B, 1, H / stride, W / stride] -> [B, C_out, H / stride, W / stride].
        """
        out = F.relu(masked_group_norm(self.conv1(x), visible, self.norm1))
        out = masked_group_norm(self.conv2(out), visible, self.norm2)
        shortcut = x
        if isinstance(self.shortcut, nn.Sequential):
            conv, norm = self.shortcut
            shortcut = masked_group_norm(conv(x), visible, norm)
        return F.relu(out + shortcut)


class ResNetEncoder(nn.Module):
    """A three-stage ResNet whose feature map is pooled onto the input's patch grid.

    Stage widths are ``width / 4``, ``width / 2`` and ``width``; the first stage keeps the input resolution
    (small images lose too much to a strided stem), each later stage halves it. The last feature map is
    average-pooled to one cell per ``patch_size`` patch of the input (``H / patch_size`` by ``W / patch_size``,
    as the ViT makes one token per patch of any input size), and the cells are the tokens after a LayerNorm.

    Args:
        channels: Input channels C.
        width: Output width D (divisible by 4).
        patch_size: Side in pixels of the patch a token stands for.
        blocks: Residual blocks per stage.
        pool_levels: Regions per side of each level of the pooled embedding (``pyramid_pool``); ``(1,)`` is the
            plain mean. The pooled width is ``pooled_width = width * sum(n ** 2)``.
        sparse_masking: Encode masked images SparK's way (``sparse_feature_map``) rather than with zeroed pixels.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        patch_size: int,
        blocks: int = 1,
        pool_levels: tuple[int, ...] = (1,),
        sparse_masking: bool = True,
    ) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"ResNet width must be divisible by 4, got {width}")
        self.width = width
        self.pool_levels = tuple(pool_levels)
        self.pooled_width = width * sum(n * n for n in self.pool_levels)
        self.patch_size = patch_size
        self.sparse_masking = sparse_masking
        widths = [width // 4, width // 2, width]
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), group_norm(widths[0]), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        previous = widths[0]
        for stage, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(previous, w, stride=2 if stage > 0 and b == 0 else 1))
                previous = w
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(width)  # as the ViT's final norm: tokens on one scale for probes and heads
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def token_grid(self, images: Tensor) -> tuple[int, int]:
        """(rows, cols) of the patch grid of ``images`` [B, C, H, W]: one token per ``patch_size`` patch."""
        return max(1, images.shape[-2] // self.patch_size), max(1, images.shape[-1] // self.patch_size)

    def feature_map(self, images: Tensor) -> Tensor:
        """The last stage's features pooled onto the patch grid (before the final norm).

        Shapes: images [B, C, H, W] -> [B, D, H / patch_size, W / patch_size].
        """
        return F.adaptive_avg_pool2d(self.stages(self.stem(images)), self.token_grid(images))

    def sparse_feature_map(self, images: Tensor, keep: Tensor) -> Tensor:
        """``feature_map`` of the kept patches alone: hidden ones are 0 after every layer and out of every norm's
        statistics, so their pixels never reach the output.

        Shapes: images [B, C, H, W], keep [B, K] -> [B, D, H / patch_size, W / patch_size].
        """
        grid = self.token_grid(images)
        visible = visible_pixels(keep, grid, self.patch_size, images.shape[-2:]).to(images)
        conv, norm, _ = self.stem
        x = F.relu(masked_group_norm(conv(images * visible), visible, norm))
        for block in self.stages:
            stride = block.conv1.stride[0]
            size = (x.shape[-2] + stride - 1) // stride, (x.shape[-1] + stride - 1) // stride
            x = block.forward_sparse(x, F.interpolate(visible, size=size, mode="nearest"))
        return F.adaptive_avg_pool2d(x, grid)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Encode images; with ``batch.keep``, hidden patches are left out (see ``sparse_masking``) and only kept
        cells are returned.

        Shapes:
            batch.data [B, C, H, W], batch.keep [B, K] -> tokens [B, K or N, D], pooled [B, pooled_width], with
            N = (H / patch_size) * (W / patch_size).
        """
        images = batch.data
        grid = self.token_grid(images)
        if batch.keep is None:
            features = self.feature_map(images)
        elif self.sparse_masking:
            features = self.sparse_feature_map(images, batch.keep)
        else:
            visible = visible_pixels(batch.keep, grid, self.patch_size, images.shape[-2:]).to(images)
            features = self.feature_map(images * visible)
        tokens = self.norm(features.flatten(2).transpose(1, 2))
        pooled = pyramid_pool(tokens, grid, self.pool_levels, batch.keep)
        if batch.keep is not None:
            tokens = gather_tokens(tokens, batch.keep)
        return EncoderOutput(tokens=tokens, pooled=pooled)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """``(stem, blocks)`` from input to output (layer-wise lr decay)."""
        return [self.stem], list(self.stages)


def pyramid_pool(
    tokens: Tensor, grid: int | tuple[int, int], levels: tuple[int, ...], keep: Tensor | None = None
) -> Tensor:
    """Spatial pyramid pooling (He et al. 2014) of a token grid: for each level n, the mean of the (kept) tokens
    in each of n x n regions, concatenated level by level in row-major region order. Level 1 is the plain mean.

    Args:
        tokens: All tokens of the grid, row-major.
        grid: Tokens per side, or (rows, cols).
        levels: Regions per side of each level.
        keep: Indices of the visible tokens; hidden ones are left out of every mean (a region with none gives 0).

    Shapes:
        tokens [B, rows * cols, D], keep [B, K] -> [B, D * sum(n ** 2 for n in levels)].
    """
    b, _, d = tokens.shape
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    weight = tokens.new_ones(b, rows * cols)
    if keep is not None:
        weight = torch.zeros_like(weight).scatter_(1, keep, 1.0)
    cells = (tokens * weight[..., None]).transpose(1, 2).reshape(b, d, rows, cols)
    counts = weight.view(b, 1, rows, cols)
    parts = []
    for n in levels:
        sums, visible = F.adaptive_avg_pool2d(cells, n), F.adaptive_avg_pool2d(counts, n)
        parts.append((sums / visible.clamp_min(1e-6)).flatten(2).transpose(1, 2).flatten(1))
    return torch.cat(parts, dim=1)


def visible_pixels(
    keep: Tensor, grid: int | tuple[int, int], patch_size: int, size: tuple[int, int] | torch.Size
) -> Tensor:
    """A [B, 1, H, W] mask, 1 on the pixels of kept patches and 0 elsewhere.

    Args:
        keep: Indices of the kept patches in row-major order over the patch grid.
        grid: Patches per side, or (rows, cols).
        patch_size: Patch side in pixels.
        size: (H, W) of the images (rows * patch_size by cols * patch_size).

    Shapes:
        keep [B, K] -> [B, 1, H, W] float.
    """
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    visible = torch.zeros(keep.shape[0], rows * cols, device=keep.device)
    visible.scatter_(1, keep, 1.0)
    cells = visible.view(-1, 1, rows, cols)
    return F.interpolate(cells, size=tuple(size), mode="nearest")
