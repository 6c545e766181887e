"""Recipe options of the time-series modality (``modalities.timeseries.options``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TimeSeriesOptions(BaseModel):
    """Decoding, normalisation, augmentation, patching and encoder options for (multivariate) time series.

    A series is C channels of L time steps. It is cut into non-overlapping patches of ``patch_len`` steps per
    channel (PatchTST's channel independence): C * ceil(L / patch_len) tokens.
    """

    model_config = ConfigDict(extra="forbid")

    # Input.
    channels: int = Field(1, gt=0, description="Channels C of every series (1 = univariate); decode checks it.")
    max_length: int = Field(
        512, gt=0, description="Longest series kept, in time steps; longer series are cut to their first max_length."
    )
    patch_len: int = Field(16, gt=0, description="Time steps per patch (one token per channel and patch).")
    stride: int | None = Field(
        None,
        gt=0,
        description="Step between patch starts; only non-overlapping patches (stride = patch_len, the default) "
        "are supported, which keeps masking a patch equal to hiding its values.",
    )
    instance_norm: bool = Field(
        False,
        description="Per-instance (RevIN-style) normalisation: subtract each channel's mean and divide by its std. "
        "Off by default: a series' level and scale often carry its class (BasicMotions raw k-NN 0.75 with it, 0.825 "
        "with dataset_norm; equal on the already z-normalised GunPoint, OSULeaf, ACSF1). Turn it on when series "
        "come in arbitrary units or offsets.",
    )
    dataset_norm: bool = Field(
        True,
        description="With instance_norm false: normalise each channel by the training set's mean and std (fitted "
        "once, saved with the run), so level and scale stay in the input, on one scale across channels.",
    )
    stats_samples: int = Field(
        5000, gt=0, description="How many training series at most are read to fit the dataset normalisation."
    )
    norm_eps: float = Field(1e-5, gt=0, description="Added to each channel's variance before the square root.")

    # Encoder.
    encoder: Literal["transformer", "dilated"] = Field(
        "transformer",
        description="transformer: PatchTST-style patch tokens and attention; dilated: TS2Vec-style dilated "
        "convolutions per channel, pooled onto the same patch tokens (depth = dilated blocks; heads unused).",
    )
    width: int = Field(128, gt=0, description="Token width D of the transformer encoder (even).")
    depth: int = Field(3, ge=0, description="Number of transformer blocks.")
    heads: int = Field(4, gt=0, description="Attention heads; must divide width.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of each block's MLP relative to width.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the transformer blocks.")
    pool: Literal["cls", "mean", "channels"] = Field(
        "mean",
        description="Pooled embedding: class token, mean of all tokens, or channels: the mean of each channel's "
        "tokens, concatenated (channels x width numbers; the transformer only).",
    )

    # Augmentation (random views), applied to the normalised series.
    jitter_sigma: float = Field(0.05, ge=0.0, description="Std of the Gaussian noise added to every value.")
    jitter_p: float = Field(1.0, ge=0.0, le=1.0, description="Probability of adding jitter noise.")
    scaling_sigma: float = Field(0.1, ge=0.0, description="Std of the per-channel scale factor drawn around 1.")
    scaling_p: float = Field(1.0, ge=0.0, le=1.0, description="Probability of scaling.")
    crop_scale: tuple[float, float] = Field(
        (0.8, 1.0), description="Range of the random crop's length as a fraction of the series length."
    )
    crop_p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a random crop (resized back).")
    warp_sigma: float = Field(0.2, ge=0.0, description="Std of the random speed of each time-warp segment.")
    warp_knots: int = Field(4, ge=1, description="Segments of the piecewise-linear time warp.")
    warp_p: float = Field(0.3, ge=0.0, le=1.0, description="Probability of a time warp.")
    permute_segments: int = Field(5, ge=2, description="Most segments a permuted view is cut into (2..this).")
    permute_p: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a segment permutation.")

    # Masked reconstruction.
    norm_patch_targets: bool = Field(
        True, description="Normalise each target patch to zero mean, unit variance (MAE's norm_pix_loss)."
    )

    @model_validator(mode="after")
    def _check(self) -> TimeSeriesOptions:
        if self.stride is not None and self.stride != self.patch_len:
            raise ValueError(
                f"stride {self.stride} differs from patch_len {self.patch_len}: only non-overlapping patches "
                "are supported (leave stride unset)"
            )
        if self.patch_len > self.max_length:
            raise ValueError(f"patch_len {self.patch_len} is longer than max_length {self.max_length}")
        if self.norm_patch_targets and self.patch_len < 2:
            raise ValueError("norm_patch_targets needs patch_len >= 2 (a patch's variance over one value is undefined)")
        if self.pool == "channels" and self.encoder != "transformer":
            raise ValueError(f"pool: channels is for encoder: transformer; the {self.encoder} encoder pools the mean")
        if self.encoder == "transformer" and self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")
        if self.width % 2:
            raise ValueError(f"width must be even (sine-cosine positions), got {self.width}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self

    def num_patches(self, length: int) -> int:
        """Patches per channel for a series of ``length`` steps: ceil(length / patch_len)."""
        return -(-length // self.patch_len)
