"""The audio processor: decoding, log-mel features, random views, padded batches and masked spectrogram modelling."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.masking import random_keep
from mmssl.modality import MaskedInput, ModalityBatch, corpus_of
from mmssl.objectives.functional import normalized_patch_targets
from mmssl_audio.augment import random_wave, spec_augment
from mmssl_audio.decode import decode_audio
from mmssl_audio.features import LogMel
from mmssl_audio.options import AudioOptions
from mmssl_audio.patches import patchify, token_padding, zero_padding

#: File written by ``AudioProcessor.save``.
STATE_FILE = "audio.json"
_STATE_VERSION = 1
#: Options the saved statistics depend on; ``load_processor`` refuses options that differ in them.
_FEATURE_KEYS = ("features", "sample_rate", "n_mels", "win_ms", "hop_ms", "f_min", "f_max")


class AudioProcessor:
    """Turns raw audio values into normalised log-mel spectrograms, random views, batches and masked inputs.

    Samples are: decoded = mono waveform [S] at ``sample_rate``; prepared / augmented = normalised log-mel
    [n_mels, T] with T <= ``max_frames`` or, with ``features: waveform``, the waveform [S'] itself with
    S' <= ``max_samples`` (for released waveform encoders, which normalise it themselves; ``mean``/``std`` are
    then unused).

    Args:
        options: The modality's options.
        mean: Log-mel normalisation mean (one number for every bin and frame, as in AST).
        std: Log-mel normalisation std (positive).
    """

    def __init__(self, options: AudioOptions, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.options = options
        self.mean, self.std = float(mean), float(std)
        self.log_mel = LogMel(options)

    def __repr__(self) -> str:
        o = self.options
        return (
            f"AudioProcessor(rate={o.sample_rate}, n_mels={o.n_mels}, max_seconds={o.max_seconds}, "
            f"patch={o.patch_freq}x{o.patch_time}, mean={self.mean:.4g}, std={self.std:.4g})"
        )

    def decode(self, raw: Any) -> Tensor:
        """Decode a path, bytes or array (see ``decode_audio``). Shapes: output [S] float32 at ``sample_rate``."""
        return decode_audio(raw, self.options.sample_rate)

    def prepare(self, sample: Tensor) -> Tensor:
        """The normalised log-mel of the clip's first ``max_seconds``.

        Shapes:
            sample: [S] decoded -> [n_mels, min(frames, max_frames)]
        """
        wave = self._check(sample)[: self.options.max_samples]
        if self.waveform:
            return wave
        return self.normalize(self.log_mel(wave))

    def augment(self, sample: Tensor, rng: np.random.Generator) -> Tensor:
        """A random view: time crop, gain and noise on the waveform, log-mel, normalisation, SpecAugment masks.

        All randomness comes from ``rng`` (see ``mmssl_audio.augment``).

        Shapes:
            sample: [S] decoded -> [n_mels, T] with T <= max_frames
        """
        wave = random_wave(self._check(sample), self.options, rng)
        if self.waveform:
            return wave
        return spec_augment(self.normalize(self.log_mel(wave)), self.options, rng)

    def collate(self, samples: list[Tensor]) -> ModalityBatch:
        """Pad prepared or augmented spectrograms with zeros in time to the longest, rounded up to ``patch_time``.

        Returns:
            ``ModalityBatch(data={"mel": mel, "lengths": lengths}, padding_mask=padding)``; the padding mask is
            at token level (time-major tokens, see ``mmssl_audio.patches``): True for the patches that lie
            entirely in the padding. A row's last, partly padded patch is a real token whose padded frames are
            zeroed by the encoder.

        Shapes:
            samples: B x [n_mels, T_b] -> mel [B, 1, n_mels, T], lengths [B] long (T_b),
            padding [B, (T / patch_time) * (n_mels / patch_freq)] bool, T = ceil(max T_b / patch_time) * patch_time
        """
        if self.waveform:
            return self._collate_waves(samples)
        if not samples:
            raise ValueError("cannot collate an empty list of spectrograms")
        o = self.options
        for s in samples:
            if not isinstance(s, Tensor) or s.ndim != 2 or s.shape[0] != o.n_mels or s.shape[1] == 0:
                raise ValueError(
                    f"expected prepared spectrograms [{o.n_mels}, T] (from prepare or augment), got {_describe(s)}"
                )
        lengths = torch.tensor([s.shape[1] for s in samples], dtype=torch.long)
        frames = -(-int(lengths.max()) // o.patch_time) * o.patch_time
        mel = torch.stack([F.pad(s.float(), (0, frames - s.shape[1])) for s in samples])[:, None]
        padding = token_padding(lengths, frames, o.patch_time, o.freq_patches)
        return ModalityBatch(data={"mel": mel, "lengths": lengths}, padding_mask=padding)

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """Masked spectrogram modelling (SSAST/MAE): keep a random ``1 - ratio`` of the patches of every clip.

        Padding tokens are hidden first (``random_keep`` ranks them last), but they are never scored: the
        returned ``mask`` is ``hidden & ~padding``. The target is the mel patches in the encoder's token order
        (time-major, each (patch_freq, patch_time) block flattened; frames past a clip's end are zero),
        normalised per patch when ``norm_patch_targets``.

        Args:
            batch: Collated spectrograms, already on their device.
            ratio: Fraction of the tokens to hide, in [0, 1).
            generator: Random generator on the batch's device (None: torch's global one).

        Returns:
            ``MaskedInput`` whose batch has ``keep`` set.

        Shapes:
            keep: [B, K]; mask: [B, N] (True = hidden real token); target: [B, N, patch_freq * patch_time],
            with N = (T / patch_time) * (n_mels / patch_freq) and K = round(N * (1 - ratio)).
        """
        if self.waveform:
            raise ValueError(
                "masked objectives (mae, data2vec, ...) hide spectrogram patches, but modalities.<audio>.options."
                "features is waveform; use features: log_mel, or an objective without masking (simclr, clip, ...)"
            )
        data = batch.data
        if not isinstance(data, dict) or "mel" not in data or "lengths" not in data:
            raise ValueError(f"audio batch data must be {{'mel', 'lengths'}} from collate, got {_describe(data)}")
        o = self.options
        mel, lengths = data["mel"], data["lengths"]
        target = patchify(zero_padding(mel.detach().float(), lengths), o.patch_freq, o.patch_time)
        if o.norm_patch_targets:
            target = normalized_patch_targets(target)
        padding = token_padding(lengths, mel.shape[-1], o.patch_time, o.freq_patches)
        b, n = target.shape[:2]
        keep, hidden = random_keep(b, n, ratio, device=mel.device, padding_mask=padding, generator=generator)
        return MaskedInput(batch=batch.with_keep(keep), mask=hidden & ~padding, target=target)

    @property
    def waveform(self) -> bool:
        """Whether samples are raw waveforms (``features: waveform``) rather than log-mel spectrograms."""
        return self.options.features == "waveform"

    def _collate_waves(self, samples: list[Tensor]) -> ModalityBatch:
        """Pad waveforms with zeros to the longest.

        Shapes: samples B x [S_b] -> data [B, S] float, padding_mask [B, S] bool (True = padding), S = max S_b
        """
        if not samples:
            raise ValueError("cannot collate an empty list of waveforms")
        for s in samples:
            if not isinstance(s, Tensor) or s.ndim != 1 or s.numel() == 0:
                raise ValueError(f"expected prepared waveforms [samples] (features: waveform), got {_describe(s)}")
        lengths = torch.tensor([s.shape[0] for s in samples], dtype=torch.long)
        longest = int(lengths.max())
        wave = torch.stack([F.pad(s.float(), (0, longest - s.shape[0])) for s in samples])
        padding = torch.arange(longest)[None, :] >= lengths[:, None]
        return ModalityBatch(data=wave, padding_mask=padding)

    def normalize(self, mel: Tensor) -> Tensor:
        """(log-mel - mean) / std. Shapes: any -> same."""
        return (mel - self.mean) / self.std

    def denormalize(self, mel: Tensor) -> Tensor:
        """Inverse of ``normalize``. Shapes: any -> same."""
        return mel * self.std + self.mean

    def raw_features(self, samples: Iterable[Tensor]) -> Tensor:
        """The raw-input baseline: each mel bin's mean and standard deviation over the clip's frames.

        The classic summary of a log-mel spectrogram (the plugin's own features, as ``prepare`` gives them, so
        normalised; nothing fitted here): ``[mean of bin 0..n_mels-1 | std of bin 0..n_mels-1]``, the std with
        divisor T (population). It does not depend on the clip's length or on where the sound lies in it, which
        the flattened, zero-padded spectrogram does. With ``features: waveform`` the samples are waveforms and
        their (unnormalised) log-mel is summarised.

        Shapes:
            samples: [n_mels, T_i] prepared spectrograms (or [S_i] waveforms), read once -> [N, 2 * n_mels] float32.
        """
        rows = []
        for sample in samples:
            mel = self.log_mel(self._check(sample)) if self.waveform else sample
            if not isinstance(mel, Tensor) or mel.ndim != 2 or mel.shape[0] != self.options.n_mels or not mel.shape[1]:
                raise ValueError(f"expected prepared spectrograms [{self.options.n_mels}, T], got {_describe(mel)}")
            mel = mel.double()
            rows.append(torch.cat([mel.mean(dim=1), mel.std(dim=1, correction=0)]).float())
        return torch.stack(rows) if rows else torch.zeros(0, 2 * self.options.n_mels)

    def state(self) -> dict[str, Any]:
        """What ``save`` writes: the fitted statistics and the feature options they belong to."""
        return {"version": _STATE_VERSION, "mean": self.mean, "std": self.std} | {
            key: getattr(self.options, key) for key in _FEATURE_KEYS
        }

    def save(self, directory: Path) -> None:
        """Write ``audio.json`` (mean, std and the feature options) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps(self.state(), indent=2) + "\n")

    def _check(self, sample: Any) -> Tensor:
        if not isinstance(sample, Tensor) or sample.ndim != 1 or sample.numel() == 0:
            raise ValueError(f"expected a decoded mono waveform [samples] (from decode), got {_describe(sample)}")
        return sample.float()


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)}"
    if isinstance(value, dict):
        return f"dict with keys {sorted(value)}"
    return type(value).__name__


def compute_stats(options: AudioOptions, corpus: Iterable[Any] | None) -> tuple[float, float]:
    """Mean and std of the log-mel values of up to ``stats_samples`` training clips.

    Each clip is decoded and cut to ``max_seconds`` as in ``prepare`` (before normalisation); every frame of
    every clip weighs the same. A (near) zero std becomes 1.
    """
    if corpus is None:
        raise ValueError("audio options give no mean/std and there is no training corpus to compute them from")
    log_mel = LogMel(options)
    total = squares = 0.0
    count = 0
    for raw in corpus_of(corpus, options.stats_samples):
        mel = log_mel(decode_audio(raw, options.sample_rate)[: options.max_samples]).double()
        total += float(mel.sum())
        squares += float(mel.square().sum())
        count += mel.numel()
    if count == 0:
        raise ValueError("the training corpus has no audio to compute the log-mel mean/std from; set mean and std")
    mean = total / count
    std = max(squares / count - mean * mean, 0.0) ** 0.5
    return mean, (std if std > 1e-6 else 1.0)


def build_processor(options: AudioOptions, corpus: Iterable[Any] | None) -> AudioProcessor:
    """Build a processor; a missing ``mean`` or ``std`` is computed from ``corpus`` (raw training values)."""
    mean, std = options.mean, options.std
    if options.features == "waveform":  # raw waveforms: no log-mel statistics to fit
        return AudioProcessor(options, 0.0 if mean is None else mean, 1.0 if std is None else std)
    if mean is None or std is None:
        fitted_mean, fitted_std = compute_stats(options, corpus)
        mean = fitted_mean if mean is None else mean
        std = fitted_std if std is None else std
    return AudioProcessor(options, mean, std)


def load_processor(options: AudioOptions, directory: Path) -> AudioProcessor:
    """Rebuild the processor that ``AudioProcessor.save`` wrote into ``directory``.

    The saved mean/std are used; the feature options (sample rate, mels, window, hop, band) must match.
    """
    file = Path(directory) / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"audio processor state {file} not found (written by AudioProcessor.save)")
    state = json.loads(file.read_text())
    for key in _FEATURE_KEYS:
        if key in state and state[key] != getattr(options, key):
            raise ValueError(
                f"{file} was saved with {key}={state[key]!r} but the options ask for {getattr(options, key)!r}; "
                "the statistics belong to the saved features"
            )
    return AudioProcessor(options, state["mean"], state["std"])
