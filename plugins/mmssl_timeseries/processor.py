"""The time-series processor: decoding, per-instance or per-dataset normalisation, views, batching, masking."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmssl.masking import random_keep
from mmssl.modality import MaskedInput, ModalityBatch, corpus_of
from mmssl_timeseries.augment import random_view
from mmssl_timeseries.decode import decode_series
from mmssl_timeseries.encoder import series_values
from mmssl_timeseries.options import TimeSeriesOptions
from mmssl_timeseries.patches import normalize_patches, patchify, token_padding_mask
from mmssl_timeseries.revin import InstanceStats, denormalize, instance_normalize

#: File written by ``TimeSeriesProcessor.save``.
STATE_FILE = "timeseries.json"
_STATE_VERSION = 2


class TimeSeriesProcessor:
    """Turns raw series into normalised tensors, random views, padded batches and masked inputs.

    Normalisation is per instance (``instance_norm``, see ``mmssl_timeseries.revin``), else per channel with
    statistics of the training set (``dataset_norm``), else none.

    Args:
        options: The modality's options.
        channel_mean: Per-channel training-set mean, used when ``instance_norm`` is off (None: 0).
        channel_std: Per-channel training-set std (positive), used with ``channel_mean`` (None: 1).
    """

    def __init__(
        self,
        options: TimeSeriesOptions,
        channel_mean: list[float] | None = None,
        channel_std: list[float] | None = None,
    ) -> None:
        self.options = options
        c = options.channels
        for name, value in (("channel_mean", channel_mean), ("channel_std", channel_std)):
            if value is not None and len(value) != c:
                raise ValueError(f"{name} has {len(value)} entries but channels is {c}: give one per channel")
        if channel_std is not None and any(s <= 0 for s in channel_std):
            raise ValueError(f"channel_std entries must be positive, got {channel_std}")
        self.channel_mean = None if channel_mean is None else [float(m) for m in channel_mean]
        self.channel_std = None if channel_std is None else [float(s) for s in channel_std]

    def __repr__(self) -> str:
        o = self.options
        return (
            f"TimeSeriesProcessor(channels={o.channels}, max_length={o.max_length}, patch_len={o.patch_len}, "
            f"instance_norm={o.instance_norm})"
        )

    def decode(self, raw: Any) -> np.ndarray:
        """Decode an array, list, tensor, DataFrame or .npy/.csv/.parquet path (see ``decode_series``).

        Shapes:
            output: [C, L] float32, NaN tail trimmed.
        """
        return decode_series(raw, self.options.channels)

    def normalize(self, sample: np.ndarray) -> tuple[Tensor, InstanceStats]:
        """Cut to ``max_length`` steps, then normalise each channel by its own mean and std (``instance_norm``).

        Returns the statistics too, so ``denormalize`` maps normalised values back to the series' units. With
        ``instance_norm: false`` they are the training set's per-channel statistics (``dataset_norm``), or mean 0
        and std 1.

        Shapes:
            sample: [C, L] decoded -> ([C, min(L, max_length)] float32, stats of [C, 1])
        """
        series = self._check(sample)[:, : self.options.max_length].astype(np.float64)
        if self.options.instance_norm:
            series, stats = instance_normalize(series, self.options.norm_eps)
        else:
            mean = np.zeros((len(series), 1)) if self.channel_mean is None else np.array(self.channel_mean)[:, None]
            std = np.ones((len(series), 1)) if self.channel_std is None else np.array(self.channel_std)[:, None]
            series, stats = (series - mean) / std, InstanceStats(mean, std)
        return torch.from_numpy(series.astype(np.float32)), stats

    @staticmethod
    def denormalize(normalized: Tensor | np.ndarray, stats: InstanceStats) -> Tensor | np.ndarray:
        """Inverse of ``normalize`` (after the cut). Shapes: [..., C, L] -> same."""
        return denormalize(normalized, stats)

    def prepare(self, sample: np.ndarray) -> Tensor:
        """The normalised series (its statistics are dropped: the encoder does not use them).

        Shapes:
            sample: [C, L] decoded -> [C, min(L, max_length)] float32
        """
        return self.normalize(sample)[0]

    def augment(self, sample: np.ndarray, rng: np.random.Generator) -> Tensor:
        """A random view of the normalised series (see ``random_view``); all randomness comes from ``rng``.

        Shapes:
            sample: [C, L] decoded -> [C, min(L, max_length)] float32
        """
        normalized = self.normalize(sample)[0].numpy()
        return torch.from_numpy(random_view(normalized, self.options, rng).astype(np.float32))

    def collate(self, samples: list[Tensor]) -> ModalityBatch:
        """Pad prepared or augmented series with zeros at the end to the batch's longest length, rounded up to
        a multiple of ``patch_len``.

        The padding mask is at token level, channel-major like the tokens: True for a patch with no real time
        step; a last patch that is only partly real counts as real (its tail is zeros). It is None when no
        token of the batch is padding.

        Shapes:
            samples: B x [C, L_i] -> data {"values": [B, C, L]}, padding_mask [B, C * N] (N = L / patch_len)
        """
        if not samples:
            raise ValueError("cannot collate an empty list of series")
        series = [self._check_prepared(s) for s in samples]
        p = self.options.patch_len
        lengths = torch.tensor([s.shape[1] for s in series], dtype=torch.long)
        n = self.options.num_patches(int(lengths.max()))
        values = torch.zeros(len(series), self.options.channels, n * p)
        for i, s in enumerate(series):
            values[i, :, : s.shape[1]] = s
        padding = token_padding_mask(lengths, self.options.channels, n, p)
        return ModalityBatch(data={"values": values}, padding_mask=padding if padding.any() else None)

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """Masked patch reconstruction: keep a random ``1 - ratio`` of the C * N patch tokens of every row.

        Padding tokens are hidden first (``random_keep`` ranks them last) and are never scored: ``mask`` is
        hidden and not padding. The target is each token's patch of normalised values, in token order,
        normalised per patch when ``norm_patch_targets``.

        Args:
            batch: Collated series, already on their device.
            ratio: Fraction of tokens to hide, in [0, 1).
            generator: Random generator on the batch's device (None: torch's global one).

        Returns:
            ``MaskedInput`` whose batch has ``keep`` set (indices into the C * N channel-major tokens).

        Shapes:
            batch.data["values"]: [B, C, L]; keep: [B, K]; mask: [B, C * N]; target: [B, C * N, patch_len],
            with N = L / patch_len and K = round(C * N * (1 - ratio)).
        """
        values = series_values(batch.data)
        target = patchify(values.detach().float(), self.options.patch_len)
        if self.options.norm_patch_targets:
            target = normalize_patches(target)
        b, tokens = target.shape[:2]
        padding = batch.padding_mask
        keep, hidden = random_keep(b, tokens, ratio, device=values.device, padding_mask=padding, generator=generator)
        mask = hidden if padding is None else hidden & ~padding
        return MaskedInput(batch=batch.with_keep(keep), mask=mask, target=target)

    def state(self) -> dict[str, Any]:
        """What ``save`` writes: the options the processed tensors depend on (nothing is fitted)."""
        o = self.options
        return {
            "version": _STATE_VERSION,
            "channels": o.channels,
            "patch_len": o.patch_len,
            "max_length": o.max_length,
            "instance_norm": o.instance_norm,
            "channel_mean": self.channel_mean,
            "channel_std": self.channel_std,
        }

    def save(self, directory: Path) -> None:
        """Write ``timeseries.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps(self.state(), indent=2) + "\n")

    def _check(self, sample: Any) -> np.ndarray:
        c = self.options.channels
        if isinstance(sample, Tensor):
            sample = sample.detach().cpu().numpy()
        if not isinstance(sample, np.ndarray) or sample.ndim != 2 or sample.shape[0] != c or sample.shape[1] == 0:
            raise ValueError(f"expected a decoded series [{c}, L] (from decode), got {_describe(sample)}")
        return sample

    def _check_prepared(self, sample: Any) -> Tensor:
        c = self.options.channels
        if isinstance(sample, np.ndarray):
            sample = torch.from_numpy(sample)
        if not isinstance(sample, Tensor) or sample.ndim != 2 or sample.shape[0] != c or sample.shape[1] == 0:
            raise ValueError(f"expected a prepared series [{c}, L] (from prepare or augment), got {_describe(sample)}")
        return sample.float()


def _describe(value: Any) -> str:
    if isinstance(value, Tensor | np.ndarray):
        return f"{type(value).__name__} of shape {list(value.shape)}"
    return type(value).__name__


def build_processor(options: TimeSeriesOptions, corpus: Iterable[Any] | None = None) -> TimeSeriesProcessor:
    """Build a processor; with ``instance_norm`` off and ``dataset_norm`` on, the per-channel mean and std are
    fitted on up to ``stats_samples`` series of ``corpus`` (raw training values)."""
    if options.instance_norm or not options.dataset_norm:
        return TimeSeriesProcessor(options)
    return TimeSeriesProcessor(options, *channel_stats(options, corpus))


def channel_stats(options: TimeSeriesOptions, corpus: Iterable[Any] | None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over every (non-NaN) time step of up to ``stats_samples`` training series, each
    cut to ``max_length``. A channel with (near) zero std gets std 1.

    Returns:
        (mean, std), each with ``options.channels`` entries.
    """
    if corpus is None:
        raise ValueError("dataset_norm needs the training series to fit the channel statistics, and there are none")
    c = options.channels
    total, squares, count = np.zeros(c), np.zeros(c), np.zeros(c)
    for raw in corpus_of(corpus, options.stats_samples):
        series = decode_series(raw, c)[:, : options.max_length].astype(np.float64)
        valid = ~np.isnan(series)
        values = np.where(valid, series, 0.0)
        total += values.sum(1)
        squares += np.square(values).sum(1)
        count += valid.sum(1)
    if not count.all():
        raise ValueError("the training series have no values to fit the dataset normalisation; set instance_norm")
    mean = total / count
    std = np.sqrt(np.clip(squares / count - np.square(mean), 0.0, None))
    std = np.where(std < 1e-6, 1.0, std)
    return mean.tolist(), std.tolist()


def load_processor(options: TimeSeriesOptions, directory: Path) -> TimeSeriesProcessor:
    """Rebuild the processor that ``TimeSeriesProcessor.save`` wrote; channels and patch_len must match."""
    file = Path(directory) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"time-series processor state {file} not found (written by TimeSeriesProcessor.save)")
    state = json.loads(file.read_text())
    for key in ("channels", "patch_len"):
        if state.get(key) != getattr(options, key):
            raise ValueError(
                f"{file} was saved with {key} {state.get(key)} but the options ask for {getattr(options, key)}"
            )
    if options.instance_norm or state.get("channel_mean") is None:
        return TimeSeriesProcessor(options)  # a run saved before dataset_norm existed trained without it
    return TimeSeriesProcessor(options, state["channel_mean"], state["channel_std"])
