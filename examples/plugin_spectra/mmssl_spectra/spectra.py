"""1-D spectra (IR, Raman, UV-vis, mass spectra...) as an mmssl modality: an example third-party plugin.

Everything is in this one file, which imports only mmssl, numpy, torch and pydantic, so it works both through the
package's entry point (``spectra = "mmssl_spectra:plugin"``) and as a plugin file named in a recipe
(``plugins: [path/to/spectra.py]``). A spectrum is a 1-D array of intensities; its tokens are non-overlapping
patches of ``patch_len`` points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mmssl.encoders.transformer import TransformerEncoder, sincos_positions
from mmssl.masking import random_keep
from mmssl.modality import Capabilities, MaskedInput, ModalityBatch, ModalityPlugin, corpus_of


class SpectraOptions(BaseModel):
    """``modalities.<key>.options`` of a spectra modality."""

    model_config = ConfigDict(extra="forbid")
    max_length: int = Field(1024, gt=0, description="Points kept per spectrum; longer ones are cut.")
    patch_len: int = Field(16, gt=1, description="Points per token.")
    width: int = Field(64, gt=0, description="Token width D (even, divisible by heads).")
    depth: int = Field(2, ge=0, description="Transformer blocks.")
    heads: int = Field(2, gt=0, description="Attention heads.")
    pool: Literal["cls", "mean"] = Field("mean", description="Pooled embedding: class token or mean of tokens.")
    crop_scale: tuple[float, float] = Field((0.7, 1.0), description="Length range of a view's crop (fraction).")
    noise_sigma: float = Field(0.05, ge=0, description="Std of the Gaussian noise of a view (normalised units).")
    max_shift: int = Field(4, ge=0, description="Largest shift of a view along the axis, in points.")
    stats_samples: int = Field(256, gt=0, description="Training spectra read to fit the intensity mean/std.")

    @model_validator(mode="after")
    def _check(self) -> SpectraOptions:
        if self.width % self.heads or self.width % 2:
            raise ValueError(f"width {self.width} must be even and divisible by heads {self.heads}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self


def decode_spectrum(raw: Any) -> np.ndarray:
    """An array or list, or a ``.npy``, ``.csv`` or ``.txt`` file (last column: intensities; header rows skipped).

    Shapes: -> [L] float32.
    """
    if isinstance(raw, str | Path):
        path = Path(raw)
        if path.suffix == ".npy":
            raw = np.load(path)
        elif path.suffix in (".csv", ".txt"):
            table = np.genfromtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
            raw = table[~np.isnan(table).all(axis=1)][:, -1]
        else:
            raise ValueError(f"{path}: expected a .npy, .csv or .txt spectrum")
    y = np.asarray(raw, dtype=np.float32)
    if y.ndim != 1 or y.size == 0 or not np.isfinite(y).all():
        raise ValueError(f"expected a non-empty, finite 1-D spectrum, got shape {y.shape}")
    return y


class SpectraProcessor:
    """Normalises by the training set's intensity mean/std; views are crops, shifts and noise."""

    def __init__(self, options: SpectraOptions, mean: float, std: float) -> None:
        self.options, self.mean, self.std = options, float(mean), float(std)

    def decode(self, raw: Any) -> np.ndarray:
        return decode_spectrum(raw)

    def prepare(self, sample: np.ndarray) -> Tensor:
        """Shapes: [L] -> [min(L, max_length)]."""
        return torch.from_numpy((sample[: self.options.max_length] - self.mean) / self.std)

    def augment(self, sample: np.ndarray, rng: np.random.Generator) -> Tensor:
        """Random crop, then a shift (edge values fill the gap), then Gaussian noise. Shapes: [L] -> [L' <= L]."""
        o = self.options
        x = self.prepare(sample).numpy()
        size = max(1, round(len(x) * rng.uniform(*o.crop_scale)))
        start = int(rng.integers(0, len(x) - size + 1))
        x = x[start : start + size]
        shift = int(np.clip(rng.integers(-o.max_shift, o.max_shift + 1), 1 - size, size - 1))
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = x[shift]
        elif shift < 0:
            x[shift:] = x[shift - 1]
        x = x + o.noise_sigma * rng.standard_normal(len(x))
        return torch.from_numpy(x.astype(np.float32))

    def collate(self, samples: list[Tensor]) -> ModalityBatch:
        """Zero-pad to the longest, rounded up to ``patch_len``; a token is padding if all its points are.

        Shapes: B x [L_b] -> data [B, L], padding_mask [B, L / patch_len].
        """
        p = self.options.patch_len
        lengths = torch.tensor([len(s) for s in samples])
        data = torch.zeros(len(samples), -(-int(lengths.max()) // p) * p)
        for row, s in enumerate(samples):
            data[row, : len(s)] = s
        padding = torch.arange(0, data.shape[1], p)[None, :] >= lengths[:, None]
        return ModalityBatch(data=data, padding_mask=padding)

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """Keep a random ``1 - ratio`` of the patches (padding hidden first, never scored); targets are the
        patches, each normalised. Shapes: keep [B, K], mask [B, N], target [B, N, patch_len]."""
        x, padding = batch.data, batch.padding_mask
        patches = x.detach().float().view(x.shape[0], -1, self.options.patch_len)
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True, unbiased=False)
        target = (patches - mean) / (var + 1e-6).sqrt()
        keep, hidden = random_keep(*patches.shape[:2], ratio, x.device, padding, generator)
        return MaskedInput(batch.with_keep(keep), hidden if padding is None else hidden & ~padding, target)

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "spectra.json").write_text(json.dumps({"mean": self.mean, "std": self.std}))


def build_processor(options: SpectraOptions, corpus: Any) -> SpectraProcessor:
    """Fit the intensity mean/std on up to ``stats_samples`` training spectra."""
    spectra = [decode_spectrum(raw)[: options.max_length] for raw in corpus_of(corpus, options.stats_samples)]
    if not spectra:
        raise ValueError("no training spectra to fit the intensity mean/std on")
    values = np.concatenate(spectra)
    return SpectraProcessor(options, values.mean(), max(float(values.std()), 1e-6))


def load_processor(options: SpectraOptions, directory: Path) -> SpectraProcessor:
    state = json.loads((Path(directory) / "spectra.json").read_text())
    return SpectraProcessor(options, state["mean"], state["std"])


class PatchEmbedder(nn.Module):
    """Patches of ``patch_len`` points -> tokens, plus fixed sine-cosine positions. Shapes: [B, L] -> [B, N, D]."""

    def __init__(self, patch_len: int, width: int) -> None:
        super().__init__()
        self.patch_len, self.proj = patch_len, nn.Linear(patch_len, width)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        tokens = self.proj(x.view(x.shape[0], -1, self.patch_len))
        return tokens + sincos_positions(tokens.shape[1], tokens.shape[2], x.device).to(tokens.dtype), None


def build_encoder(options: SpectraOptions, processor: SpectraProcessor | None = None) -> TransformerEncoder:
    embedder = PatchEmbedder(options.patch_len, options.width)
    return TransformerEncoder(embedder, options.width, options.depth, options.heads, pool=options.pool)


plugin = ModalityPlugin(
    name="spectra",
    description="1-D spectra (arrays, .npy/.csv/.txt): crop/shift/noise views, masked patch reconstruction.",
    capabilities=Capabilities(views=True, masking="continuous", pairing=True),
    options=SpectraOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=build_encoder,
)
