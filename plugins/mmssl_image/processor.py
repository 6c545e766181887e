"""The image processor: decoding, preprocessing, random views, batching and MAE masking."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from mmssl.masking import random_keep
from mmssl.modality import MaskedInput, ModalityBatch, corpus_of
from mmssl_image.augment import random_view, resize_center_crop
from mmssl_image.decode import decode_image
from mmssl_image.options import ImageOptions
from mmssl_image.patches import normalize_patches, patchify

#: File written by ``ImageProcessor.save``.
STATE_FILE = "image.json"
_STATE_VERSION = 1


class ImageProcessor:
    """Turns raw image values into normalised tensors, random views, batches and masked inputs.

    Args:
        options: The modality's options.
        mean: Per-channel normalisation mean (one entry per channel).
        std: Per-channel normalisation std (positive, one entry per channel).
    """

    def __init__(self, options: ImageOptions, mean: list[float], std: list[float]) -> None:
        if len(mean) != options.channels or len(std) != options.channels:
            raise ValueError(f"mean {mean} and std {std} need {options.channels} entries (one per channel)")
        if any(s <= 0 for s in std):
            raise ValueError(f"std entries must be positive, got {std}")
        self.options = options
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def __repr__(self) -> str:
        o = self.options
        sizes = f"size={o.image_size}, patch={o.patch_size}, channels={o.channels}"
        return f"ImageProcessor({sizes}, mean={self.mean}, std={self.std})"

    def decode(self, raw: Any) -> Tensor:
        """Decode a path, bytes, PIL image or array (see ``decode_image``).

        Shapes:
            output: [C, H, W] float32 in [0, 1]
        """
        return decode_image(raw, self.options.channels)

    def prepare(self, sample: Tensor) -> Tensor:
        """Resize the shorter side to ``image_size``, crop the centre and normalise.

        Shapes:
            sample: [C, H, W] decoded -> [C, image_size, image_size]
        """
        return self.normalize(resize_center_crop(self._check(sample), self.options.image_size))

    def augment(self, sample: Tensor, rng: np.random.Generator) -> Tensor:
        """A random normalised view (see ``random_view``); all randomness comes from ``rng``.

        Shapes:
            sample: [C, H, W] decoded -> [C, view_size, view_size] (``crop_size``, or ``image_size`` when unset)
        """
        return self.normalize(random_view(self._check(sample), self.options, rng))

    def augment_local(self, sample: Tensor, rng: np.random.Generator) -> Tensor:
        """A small random local crop (DINO's multi-crop), normalised; all randomness comes from ``rng``.

        Shapes:
            sample: [C, H, W] decoded -> [C, local_size, local_size]
        """
        return self.normalize(random_view(self._check(sample), self.options, rng, local=True))

    def collate(self, samples: list[Tensor]) -> ModalityBatch:
        """Stack prepared or augmented samples.

        Shapes:
            samples: B x [C, S, S] -> data [B, C, S, S]
        """
        if not samples:
            raise ValueError("cannot collate an empty list of images")
        shapes = {tuple(s.shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot collate images of different shapes {sorted(shapes)}; prepare or augment them first"
            )
        return ModalityBatch(data=torch.stack(samples))

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """MAE masking: keep a random ``1 - ratio`` of the patches of every image.

        The target is the patchified normalised input in the encoder's token order, each patch vector laid
        out as (p, p, C) flattened (see ``mmssl_image.patches``), normalised per patch when
        ``norm_pix_loss``.

        Args:
            batch: Collated images, already on their device.
            ratio: Fraction of patches to hide, in [0, 1).
            generator: Random generator on the batch's device (None: torch's global one).

        Returns:
            ``MaskedInput`` whose batch has ``keep`` set.

        Shapes:
            batch.data: [B, C, H, W]; keep: [B, K]; mask: [B, N] (True = hidden); target: [B, N, p * p * C],
            with N = (H / p) * (W / p) and K = round(N * (1 - ratio)).
        """
        images = batch.data
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(f"image batch data must be a [B, C, H, W] tensor, got {_describe(images)}")
        target = patchify(images.detach().float(), self.options.patch_size)
        if self.options.norm_pix_loss:
            target = normalize_patches(target)
        b, n = target.shape[:2]
        keep, hidden = random_keep(b, n, ratio, device=images.device, generator=generator)
        return MaskedInput(batch=batch.with_keep(keep), mask=hidden, target=target)

    def token_grid(self, batch: ModalityBatch) -> tuple[int, int]:
        """(rows, cols) of the patch grid of a batch, in the encoder's row-major token order (block masking)."""
        h, w = batch.data.shape[-2:]
        return h // self.options.patch_size, w // self.options.patch_size

    def normalize(self, image: Tensor) -> Tensor:
        """(image - mean) / std per channel. Shapes: [C, H, W] or [B, C, H, W] -> same."""
        return TF.normalize(image.float(), self.mean, self.std)

    def denormalize(self, image: Tensor) -> Tensor:
        """Inverse of ``normalize`` (for showing reconstructions). Shapes: [..., C, H, W] -> same."""
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device)[:, None, None]
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device)[:, None, None]
        return image * std + mean

    def state(self) -> dict[str, Any]:
        """What ``save`` writes: the fitted statistics and the options they belong to."""
        o = self.options
        return {
            "version": _STATE_VERSION,
            "channels": o.channels,
            "image_size": o.image_size,
            "patch_size": o.patch_size,
            "mean": self.mean,
            "std": self.std,
        }

    def save(self, directory: Path) -> None:
        """Write ``image.json`` (mean, std and the sizes) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps(self.state(), indent=2) + "\n")

    def _check(self, sample: Any) -> Tensor:
        c = self.options.channels
        if not isinstance(sample, Tensor) or sample.ndim != 3 or sample.shape[0] != c:
            raise ValueError(f"expected a decoded image tensor [{c}, H, W] (from decode), got {_describe(sample)}")
        return sample.float()


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)}"
    return type(value).__name__


def compute_stats(options: ImageOptions, corpus: Iterable[Any] | None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over the pixels of up to ``stats_samples`` training images.

    Each image is decoded, resized and centre-cropped as in ``prepare`` (without normalisation), so every
    image weighs the same. A channel with (near) zero std gets std 1.

    Returns:
        (mean, std), each with ``options.channels`` entries.
    """
    if corpus is None:
        raise ValueError("image options give no mean/std and there is no training corpus to compute them from")
    c = options.channels
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    pixels = 0
    for raw in corpus_of(corpus, options.stats_samples):
        image = resize_center_crop(decode_image(raw, c), options.image_size).double()
        total += image.sum(dim=(1, 2))
        squares += image.square().sum(dim=(1, 2))
        pixels += image.shape[1] * image.shape[2]
    if pixels == 0:
        raise ValueError("the training corpus has no images to compute the image mean/std from; set mean and std")
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.tolist(), std.tolist()


def build_processor(options: ImageOptions, corpus: Iterable[Any] | None) -> ImageProcessor:
    """Build a processor; a missing ``mean`` or ``std`` is computed from ``corpus`` (raw training values)."""
    mean, std = options.mean, options.std
    if mean is None or std is None:
        fitted_mean, fitted_std = compute_stats(options, corpus)
        mean = fitted_mean if mean is None else mean
        std = fitted_std if std is None else std
    return ImageProcessor(options, mean, std)


def load_processor(options: ImageOptions, directory: Path) -> ImageProcessor:
    """Rebuild the processor that ``ImageProcessor.save`` wrote into ``directory``.

    The saved mean/std are used; ``channels`` must match the options. Sizes come from ``options``.
    """
    file = Path(directory) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"image processor state {file} not found (written by ImageProcessor.save)")
    state = json.loads(file.read_text())
    if state.get("channels") != options.channels:
        raise ValueError(
            f"{file} was saved for {state.get('channels')} channels but the options ask for {options.channels}"
        )
    return ImageProcessor(options, state["mean"], state["std"])
