"""Per-instance normalisation (RevIN-style) and its inverse.

Each channel of a series is shifted by its own mean and divided by its own std, so the encoder sees series of
one scale whatever the dataset's units. The statistics are returned with the normalised series, so a
prediction in normalised units (a forecast, a reconstruction) can be mapped back with ``denormalize``. The
encoder itself never sees them: ``prepare`` keeps only the normalised series, so level and scale are not part
of the embedding (set ``instance_norm: false`` where they carry the class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class InstanceStats:
    """Per-channel statistics of one series. Shapes: mean [C, 1], std [C, 1] (std = sqrt(var + eps))."""

    mean: np.ndarray
    std: np.ndarray


def instance_normalize(series: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, InstanceStats]:
    """(series - mean) / sqrt(var + eps) per channel, over the time steps (population variance).

    Shapes:
        series: [C, L] -> ([C, L], stats with [C, 1] arrays)
    """
    values = np.asarray(series, dtype=np.float64)
    mean = values.mean(axis=1, keepdims=True)
    std = np.sqrt(values.var(axis=1, keepdims=True) + eps)
    return (values - mean) / std, InstanceStats(mean, std)


def denormalize(normalized: Tensor | np.ndarray, stats: InstanceStats) -> Tensor | np.ndarray:
    """Inverse of ``instance_normalize``: normalized * std + mean.

    Shapes:
        normalized: [..., C, L] (tensor or array) -> same type and shape.
    """
    if isinstance(normalized, Tensor):
        mean = torch.as_tensor(stats.mean, dtype=normalized.dtype, device=normalized.device)
        std = torch.as_tensor(stats.std, dtype=normalized.dtype, device=normalized.device)
        return normalized * std + mean
    return np.asarray(normalized) * stats.std + stats.mean
