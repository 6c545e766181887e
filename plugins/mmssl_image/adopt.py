"""Feeding a released image encoder: its image size, patch size and normalisation."""

from __future__ import annotations

from typing import Any

from mmssl_image.options import ImageOptions


def adopt(options: ImageOptions, preprocessing: Any) -> ImageOptions:
    """Options that preprocess images as the released encoder expects (``mmssl.encoders.base.Preprocessing``).

    Sets ``image_size``, ``mean``, ``std`` and ``channels`` (3: every released vision encoder reads RGB). The
    patch size only matters to the plugin's own masking (MAE targets); it becomes the encoder's
    ``patch_size`` when that divides ``image_size``, else ``image_size`` (one patch).

    Raises:
        ValueError: The encoder does not read pixels, or its preprocessing lacks an image size or mean/std.
    """
    if preprocessing.input != "pixels":
        raise ValueError(f"the image plugin feeds pixels [B, C, H, W], but this encoder reads {preprocessing.input}")
    size = preprocessing.image_size
    if not size:
        raise ValueError("the released encoder gives no image_size; the image plugin cannot resize for it")
    mean, std = preprocessing.mean, preprocessing.std
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"the released encoder's mean {mean} / std {std} must have 3 entries (RGB)")
    patch = preprocessing.patch_size
    patch = patch if patch and size % patch == 0 else size
    return ImageOptions.model_validate(
        options.model_dump()
        | {
            "image_size": int(size),
            "patch_size": int(patch),
            "channels": 3,
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
        }
    )
