"""Deterministic preprocessing and SimCLR-style random views of decoded images.

Every random choice is drawn from the ``numpy.random.Generator`` passed in, never from torch's or Python's
global generators, so the same generator state always gives the same view (exact resume relies on it). The
pixel operations are ``torchvision.transforms.v2.functional`` calls, which are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from mmssl_image.options import ImageOptions

#: Aspect-ratio range of the random resized crop (width / height).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: Sigma range of the Gaussian blur, in pixels of the output image.
BLUR_SIGMA = (0.1, 2.0)


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` and crop the centre square.

    Shapes:
        image: [C, H, W] -> [C, size, size]
    """
    image = TF.resize(image, [size], antialias=True)
    return TF.center_crop(image, [size, size])


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """Sample a random resized crop box (torchvision's ``RandomResizedCrop`` rule, drawn from ``rng``).

    Tries ten times for a box with area fraction in ``scale`` and aspect ratio (log-uniform) in ``ratio``
    that fits the image; falls back to the largest centred box within the ratio range.

    Returns:
        (top, left, box_height, box_width).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(image: Tensor, strength: float, rng: np.random.Generator) -> Tensor:
    """Random brightness, contrast, saturation and hue changes, in a random order (torchvision's ColorJitter).

    Factors are uniform in [max(0, 1 - strength), 1 + strength]; the hue shift is uniform in
    [-0.1 * strength, 0.1 * strength] (clipped to 0.5). Saturation and hue apply to 3-channel images only.

    Shapes:
        image: [C, H, W] in [0, 1] -> [C, H, W]
    """
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    hue = min(0.1 * strength, 0.5)
    factors = {
        "brightness": rng.uniform(low, high),
        "contrast": rng.uniform(low, high),
        "saturation": rng.uniform(low, high),
        "hue": rng.uniform(-hue, hue),
    }
    ops = ("brightness", "contrast", "saturation", "hue")
    for index in rng.permutation(len(ops)):
        op = ops[index]
        if image.shape[0] != 3 and op in ("saturation", "hue"):
            continue
        if op == "brightness":
            image = TF.adjust_brightness(image, float(factors[op]))
        elif op == "contrast":
            image = TF.adjust_contrast(image, float(factors[op]))
        elif op == "saturation":
            image = TF.adjust_saturation(image, float(factors[op]))
        else:
            image = TF.adjust_hue(image, float(factors[op]))
    return image


def gaussian_blur(image: Tensor, rng: np.random.Generator) -> Tensor:
    """Blur with a random sigma in ``BLUR_SIGMA`` and an odd kernel about a tenth of the image side.

    Shapes:
        image: [C, H, W] -> [C, H, W]
    """
    sigma = float(rng.uniform(*BLUR_SIGMA))
    kernel = max(3, int(0.1 * min(image.shape[-2:])) // 2 * 2 + 1)
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def random_view(image: Tensor, options: ImageOptions, rng: np.random.Generator, local: bool = False) -> Tensor:
    """A SimCLR view without normalisation: resized crop, flip, colour jitter, greyscale, blur.

    Args:
        image: Decoded image in [0, 1] with ``options.channels`` channels.
        options: Crop scale, probabilities and jitter strength.
        rng: The only source of randomness.
        local: A small local crop (DINO's multi-crop): ``local_crop_scale`` resized to ``local_size``.

    Shapes:
        image: [C, H, W] -> [C, S, S] with S = ``options.view_size`` (``local_size`` when ``local``)
    """
    size = options.local_size if local else options.view_size
    scale = options.local_crop_scale if local else options.crop_scale
    top, left, h, w = sample_crop_box(image.shape[-2], image.shape[-1], scale, rng)
    image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if options.flip and rng.random() < 0.5:
        image = TF.horizontal_flip(image)
    if options.color_jitter > 0 and rng.random() < options.color_jitter_p:
        image = color_jitter(image, options.color_jitter, rng)
    if image.shape[0] == 3 and rng.random() < options.grayscale_p:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if rng.random() < options.blur_p:
        image = gaussian_blur(image, rng)
    return image.clamp(0.0, 1.0)
