"""Random views of (normalised) series: random crop, time warp, segment permutation, scaling and jitter.

Every random choice is drawn from the ``numpy.random.Generator`` passed in, never from torch's or Python's
global generators, so the same generator state always gives the same view (exact resume relies on it). The
operations keep the length of the series, so views batch like prepared series.
"""

from __future__ import annotations

import numpy as np

from mmssl_timeseries.options import TimeSeriesOptions


def resample(series: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of every channel at fractional time ``positions`` (in steps of the input).

    Shapes:
        series: [C, L], positions: [M] -> [C, M]
    """
    grid = np.arange(series.shape[1], dtype=np.float64)
    return np.stack([np.interp(positions, grid, channel) for channel in series])


def random_crop(series: np.ndarray, scale: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Window slicing: a random window of a fraction in ``scale`` of the length, resized back to the length.

    The window is stretched to the original length by linear interpolation (rather than zero-padded), so the
    view has no padding and the same number of patches as the series.

    Shapes:
        series: [C, L] -> [C, L]
    """
    length = series.shape[1]
    window = min(length, max(2, int(round(rng.uniform(*scale) * length))))
    start = int(rng.integers(0, length - window + 1))
    if window >= length or length < 2:
        return series
    return resample(series[:, start : start + window], np.linspace(0.0, window - 1.0, length))


def time_warp(series: np.ndarray, sigma: float, knots: int, rng: np.random.Generator) -> np.ndarray:
    """Piecewise-linear time warp: ``knots`` equal output segments, each played at a random speed.

    Speeds are ``max(0.1, 1 + sigma * N(0, 1))``, rescaled so the warped series starts and ends where the
    series does.

    Shapes:
        series: [C, L] -> [C, L]
    """
    length = series.shape[1]
    speeds = np.maximum(0.1, 1.0 + sigma * rng.standard_normal(knots))
    if length < 2:
        return series
    out_bounds = np.linspace(0.0, length - 1.0, knots + 1)
    src_bounds = np.concatenate([[0.0], np.cumsum(speeds)])
    src_bounds *= (length - 1.0) / src_bounds[-1]
    positions = np.interp(np.arange(length, dtype=np.float64), out_bounds, src_bounds)
    return resample(series, positions)


def permute_segments(series: np.ndarray, max_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Cut the series at random points into 2..``max_segments`` pieces and put them in a random order.

    Every channel uses the same cuts and order.

    Shapes:
        series: [C, L] -> [C, L]
    """
    length = series.shape[1]
    pieces = int(rng.integers(2, max_segments + 1))
    pieces = min(pieces, length)
    if pieces < 2:
        return series
    cuts = np.sort(rng.choice(length - 1, size=pieces - 1, replace=False) + 1)
    segments = np.split(series, cuts, axis=1)
    order = rng.permutation(pieces)
    return np.concatenate([segments[i] for i in order], axis=1)


def random_view(series: np.ndarray, options: TimeSeriesOptions, rng: np.random.Generator) -> np.ndarray:
    """A random view, in this order, each with its own probability: crop, time warp, permutation, per-channel
    scaling by ``N(1, scaling_sigma)``, additive jitter ``N(0, jitter_sigma)``.

    Applied to the normalised series, so the sigmas are in units of each channel's std.

    Shapes:
        series: [C, L] -> [C, L] float64
    """
    o = options
    x = np.asarray(series, dtype=np.float64)
    if o.crop_p > 0 and rng.random() < o.crop_p:
        x = random_crop(x, o.crop_scale, rng)
    if o.warp_p > 0 and o.warp_sigma > 0 and rng.random() < o.warp_p:
        x = time_warp(x, o.warp_sigma, o.warp_knots, rng)
    if o.permute_p > 0 and rng.random() < o.permute_p:
        x = permute_segments(x, o.permute_segments, rng)
    if o.scaling_p > 0 and o.scaling_sigma > 0 and rng.random() < o.scaling_p:
        x = x * (1.0 + o.scaling_sigma * rng.standard_normal((x.shape[0], 1)))
    if o.jitter_p > 0 and o.jitter_sigma > 0 and rng.random() < o.jitter_p:
        x = x + o.jitter_sigma * rng.standard_normal(x.shape)
    return x
