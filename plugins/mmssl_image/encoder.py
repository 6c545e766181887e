"""The image encoders: a ViT (convolutional patch embedder + the shared transformer) or a small ResNet."""

from __future__ import annotations

from torch import Tensor, nn

from mmssl.encoders.transformer import TransformerEncoder, sincos_positions_2d
from mmssl_image.options import ImageOptions
from mmssl_image.resnet import ResNetEncoder


class PatchEmbedder(nn.Module):
    """Project non-overlapping patches to tokens and add fixed 2-D sine-cosine positions.

    Tokens are in row-major order over the patch grid, matching ``mmssl_image.patches.patchify``.

    Args:
        channels: Input channels C.
        patch_size: Patch side p (convolution kernel and stride).
        image_size: Expected image side; images of another size (divisible by p) get positions computed on
            the fly.
        width: Token width D (divisible by 4).
    """

    def __init__(self, channels: int, patch_size: int, image_size: int, width: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.width = width
        self.proj = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        grid = image_size // patch_size
        self.grid = (grid, grid)
        self.register_buffer("positions", sincos_positions_2d(grid, grid, width)[None], persistent=False)
        # MAE: initialise the projection like a linear layer over the flattened patch.
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        """Embed patches.

        Shapes:
            images: [B, C, H, W] -> tokens [B, (H/p) * (W/p), D]; padding mask: None.
        """
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
        x = self.proj(images).flatten(2).transpose(1, 2)
        grid = (h // p, w // p)
        positions = self.positions if grid == self.grid else sincos_positions_2d(*grid, self.width).to(x.device)[None]
        return x + positions.to(x.dtype), None


def build_encoder(options: ImageOptions, processor: object | None = None) -> TransformerEncoder | ResNetEncoder:
    """The encoder ``options.encoder_kind`` names: a ViT ``TransformerEncoder(PatchEmbedder(...), ...)`` or a
    ``ResNetEncoder`` with one token per patch-grid cell.

    The processor is not needed (the architecture depends on the options only); it is accepted for the
    plugin contract.
    """
    if options.encoder_kind == "resnet":
        return ResNetEncoder(
            options.channels,
            options.width,
            options.patch_size,
            options.conv_blocks,
            tuple(options.pool_levels),
            options.sparse_masking,
        )
    embedder = PatchEmbedder(options.channels, options.patch_size, options.image_size, options.width)
    return TransformerEncoder(
        embedder,
        width=options.width,
        depth=options.depth,
        heads=options.heads,
        mlp_ratio=options.mlp_ratio,
        dropout=options.dropout,
        pool=options.pool,
    )
