"""Recipe options of the image modality (``modalities.image.options``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Largest image side for which ``encoder: auto`` picks the ResNet.
RESNET_MAX_SIZE = 64


class ImageOptions(BaseModel):
    """Preprocessing, augmentation and encoder options for images.

    Validation checks that the patch size divides the image size, that ``mean``/``std`` have one entry per
    channel, that the encoder width suits the heads and the 2-D sine-cosine positions, and that the
    augmentation ranges and probabilities make sense.
    """

    model_config = ConfigDict(extra="forbid")

    # Preprocessing.
    image_size: int = Field(224, gt=0, description="Side of the square image after preprocessing, in pixels.")
    patch_size: int = Field(16, gt=0, description="Side of a square patch (one token); must divide image_size.")
    channels: Literal[1, 3] = Field(3, description="Channels after decoding: 1 (greyscale) or 3 (RGB).")
    mean: list[float] | None = Field(
        None, description="Per-channel normalisation mean; None computes it from the training images."
    )
    std: list[float] | None = Field(
        None, description="Per-channel normalisation std; None computes it from the training images."
    )
    stats_samples: int = Field(
        2000, gt=0, description="How many training images at most are read to compute a missing mean/std."
    )

    # Encoder.
    encoder: Literal["auto", "vit", "resnet"] = Field(
        "auto",
        description=(
            "Image encoder: vit (patch transformer), resnet (three-stage ResNet pooled onto the patch grid) or "
            f"auto: resnet for images of at most {RESNET_MAX_SIZE} px (small images, small data: convolutions "
            "learn far faster there), vit above."
        ),
    )
    conv_blocks: int = Field(1, ge=1, description="ResNet only: residual blocks per stage (three stages).")
    pool_levels: list[int] = Field(
        [1],
        min_length=1,
        description="ResNet only: the pooled embedding concatenates the mean of the tokens (grid cells) over n x n "
        "regions for each n listed (spatial pyramid pooling); [1] is the plain mean (width values), [1, 2] adds the "
        "four quadrants (5 x width values), which keeps coarse layout where images are aligned.",
    )
    sparse_masking: bool = Field(
        True,
        description="ResNet only, masked objectives: encode a masked image as if its hidden patches were not there "
        "(SparK: 0 after every layer, left out of every norm's statistics) rather than with zeroed pixels. data2vec "
        "on Fashion-MNIST: pooled k-NN +1.2 to +1.5 points at equal steps, +0.9 at equal time; a step costs about "
        "1.3 times as much (docs/benchmarks.md#masked-convolutions).",
    )
    width: int = Field(192, gt=0, description="Token width D of the transformer encoder.")
    depth: int = Field(4, ge=0, description="Number of transformer blocks.")
    heads: int = Field(3, gt=0, description="Attention heads; must divide width.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of each block's MLP relative to width.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the transformer blocks.")
    pool: Literal["cls", "mean"] = Field("cls", description="Pooled embedding: class token or mean of tokens.")

    # Augmentation (random views).
    crop_scale: tuple[float, float] = Field(
        (0.2, 1.0), description="Area range (fraction of the image) of the random resized crop."
    )
    crop_size: int | None = Field(
        None,
        gt=0,
        description="Side of the random views in pixels (the crops are resized to it); None: image_size. A "
        "smaller side makes each training step cheaper (20 of 28 px: about 1.45 times the steps per second for "
        "the ResNet); evaluation still encodes the whole image at image_size (FixRes, Touvron et al. 2019).",
    )
    local_crop_scale: tuple[float, float] = Field(
        (0.05, 0.35), description="Area range of DINO's small local crops (views local0, local1, ...)."
    )
    local_crop_size: int | None = Field(
        None,
        gt=0,
        description="Side of the local crops in pixels; None: 3/7 of image_size (DINO's 96 of 224) rounded to a "
        "multiple of patch_size.",
    )
    flip: bool = Field(
        False,
        description="Flip views horizontally with probability 0.5. Off by default: a mirrored digit, letter, "
        "sign, scan or map tile is often another thing; turn it on where left and right are interchangeable "
        "(clothing, natural photos).",
    )
    color_jitter: float = Field(
        0.4, ge=0.0, description="Brightness/contrast/saturation jitter strength; hue jitter is 0.1 * strength."
    )
    color_jitter_p: float = Field(0.8, ge=0.0, le=1.0, description="Probability of applying colour jitter.")
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0, description="Probability of a greyscale view (3 channels).")
    blur_p: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a Gaussian blur (sigma 0.1..2).")

    # Masked reconstruction.
    norm_pix_loss: bool = Field(True, description="Normalise each patch of the reconstruction target (MAE).")

    @model_validator(mode="after")
    def _check(self) -> ImageOptions:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} must divide image_size {self.image_size} "
                f"(e.g. image_size {self.image_size - self.image_size % self.patch_size or self.patch_size})"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.channels:
                raise ValueError(
                    f"{name} has {len(value)} entries but channels is {self.channels}: give one per channel"
                )
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std entries must be positive, got {self.std}")
        if self.encoder_kind == "vit" and self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")
        if self.width % 4:
            raise ValueError(
                f"width must be divisible by 4 (ViT: 2-D sine-cosine positions; ResNet: stage widths), got {self.width}"
            )
        for name in ("crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {getattr(self, name)}")
        if self.pool_levels != [1]:
            if self.encoder_kind != "resnet":
                raise ValueError(
                    f"pool_levels {self.pool_levels} is for the ResNet encoder, but this image encoder is the ViT "
                    "(use pool: cls or mean)"
                )
            if any(not 1 <= n <= self.grid for n in self.pool_levels):
                raise ValueError(
                    f"pool_levels {self.pool_levels}: each level must be between 1 and the token grid "
                    f"{self.grid} (image_size / patch_size)"
                )
        for name in ("crop_size", "local_crop_size"):
            side = getattr(self, name)
            if side is not None and side % self.patch_size:
                raise ValueError(f"{name} {side} must be a multiple of patch_size {self.patch_size}")
        return self

    @property
    def encoder_kind(self) -> Literal["vit", "resnet"]:
        """The encoder ``encoder`` resolves to (``auto`` picks by image size)."""
        if self.encoder != "auto":
            return self.encoder
        return "resnet" if self.image_size <= RESNET_MAX_SIZE else "vit"

    @property
    def view_size(self) -> int:
        """Side of the random views: ``crop_size`` or ``image_size``."""
        return self.crop_size if self.crop_size is not None else self.image_size

    @property
    def local_size(self) -> int:
        """Side of the local crops: ``local_crop_size`` or 3/7 of ``image_size`` in whole patches (at least one)."""
        if self.local_crop_size is not None:
            return self.local_crop_size
        return max(1, round(self.image_size * 3 / 7 / self.patch_size)) * self.patch_size

    @property
    def grid(self) -> int:
        """Patches per side of the preprocessed image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per image, N = grid ** 2."""
        return self.grid**2
