"""Random views of waveforms and spectrograms: time crop, gain, Gaussian noise and SpecAugment masks.

Every random choice is drawn from the ``numpy.random.Generator`` passed in (never from torch's or Python's
global generators), so the same generator state always gives the same view.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mmssl_audio.options import AudioOptions


def random_crop(wave: Tensor, samples: int, rng: np.random.Generator) -> Tensor:
    """A random window of ``samples`` samples; shorter clips are returned whole. Shapes: [S] -> [min(S, samples)]."""
    if wave.shape[-1] <= samples:
        return wave
    start = int(rng.integers(0, wave.shape[-1] - samples + 1))
    return wave[start : start + samples]


def add_noise(wave: Tensor, snr_db: float, rng: np.random.Generator) -> Tensor:
    """Add white Gaussian noise at ``snr_db`` dB below the clip's mean power. Shapes: [S] -> [S]."""
    power = float(wave.double().square().mean())
    if power <= 0.0:
        return wave
    std = (power / 10.0 ** (snr_db / 10.0)) ** 0.5
    noise = torch.from_numpy(rng.standard_normal(wave.shape[-1]).astype(np.float32))
    return wave + std * noise


def random_wave(wave: Tensor, options: AudioOptions, rng: np.random.Generator) -> Tensor:
    """Random time crop (``crop_seconds``), then gain (``gain_db``, prob. ``gain_p``), then Gaussian noise
    (``noise_snr_db``, prob. ``noise_p``). Shapes: [S] -> [S'] with S' <= S."""
    wave = random_crop(wave, options.crop_samples, rng)
    if rng.random() < options.gain_p:
        wave = wave * float(10.0 ** (rng.uniform(*options.gain_db) / 20.0))
    if rng.random() < options.noise_p:
        wave = add_noise(wave, float(rng.uniform(*options.noise_snr_db)), rng)
    return wave


def spec_augment(mel: Tensor, options: AudioOptions, rng: np.random.Generator, value: float = 0.0) -> Tensor:
    """SpecAugment masks (with probability ``spec_augment_p``): ``time_masks`` bands of up to ``time_mask``
    frames and ``freq_masks`` bands of up to ``freq_mask`` mel bins, set to ``value`` (0 = the dataset mean of a
    normalised spectrogram). Widths are uniform in [0, max]; no band is wider than a fifth of the clip's
    frames, so short clips are not blanked out. Shapes: [F, T] -> [F, T]."""
    if rng.random() >= options.spec_augment_p:
        return mel
    mel = mel.clone()
    bins, frames = mel.shape
    for _ in range(options.freq_masks):
        width = int(rng.integers(0, min(options.freq_mask, bins) + 1))
        start = int(rng.integers(0, bins - width + 1))
        mel[start : start + width, :] = value
    for _ in range(options.time_masks):
        width = int(rng.integers(0, min(options.time_mask, frames // 5) + 1))
        start = int(rng.integers(0, frames - width + 1))
        mel[:, start : start + width] = value
    return mel
