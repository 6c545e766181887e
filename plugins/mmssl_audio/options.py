"""Recipe options of the audio modality (``modalities.audio.options``)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AudioOptions(BaseModel):
    """Decoding, log-mel features, augmentation, patching and encoder options for audio.

    Validation checks that the frequency patch divides ``n_mels``, that the encoder width suits the heads and
    the 2-D sine-cosine positions, that ``mean``/``std`` are usable and that the ranges are ordered.
    """

    model_config = ConfigDict(extra="forbid")

    # Decoding and features.
    features: Literal["log_mel", "waveform"] = Field(
        "log_mel",
        description="Encoder input: normalised log-mel spectrograms (patches; the plugin's encoder, AST) or raw "
        "waveforms [B, S] with a sample padding mask (released wav2vec2/HuBERT-like encoders only; no masking "
        "objectives, no SpecAugment).",
    )
    sample_rate: int = Field(
        16000, gt=0, description="Sample rate in Hz everything is resampled to; arrays are taken to be at this rate."
    )
    n_mels: int = Field(64, gt=0, description="Mel bands of the log-mel spectrogram (frequency bins F).")
    win_ms: float = Field(25.0, gt=0, description="STFT window length in milliseconds.")
    hop_ms: float = Field(10.0, gt=0, description="STFT hop length in milliseconds (one spectrogram frame).")
    f_min: float = Field(0.0, ge=0, description="Lowest mel filter frequency in Hz.")
    f_max: float | None = Field(None, gt=0, description="Highest mel filter frequency in Hz; None: sample_rate / 2.")
    max_seconds: float = Field(
        4.0, gt=0, description="Clips are cut to their first max_seconds (prepare) or a random window (augment)."
    )
    mean: float | None = Field(
        None, description="Log-mel normalisation mean; None computes it from the training clips."
    )
    std: float | None = Field(
        None, gt=0, description="Log-mel normalisation std; None computes it from the training clips."
    )
    stats_samples: int = Field(
        500, gt=0, description="How many training clips at most are read to compute a missing mean/std."
    )

    # Patches (tokens).
    patch_freq: int = Field(16, gt=0, description="Mel bins per patch; must divide n_mels.")
    patch_time: int = Field(16, gt=0, description="Frames per patch; clips are padded to a multiple of it.")

    # Encoder.
    width: int = Field(192, gt=0, description="Token width D of the transformer encoder (divisible by 4).")
    depth: int = Field(4, ge=0, description="Number of transformer blocks.")
    heads: int = Field(3, gt=0, description="Attention heads; must divide width.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of each block's MLP relative to width.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the transformer blocks.")
    pool: Literal["cls", "mean"] = Field(
        "mean", description="Pooled embedding: class token (cls) or mean of the non-padding tokens (mean)."
    )

    # Augmentation (random views): waveform, then spectrogram.
    crop_seconds: float | None = Field(
        None,
        gt=0,
        description="Length of the random time crop of a view (at most max_seconds); None: max_seconds. "
        "Shorter clips are kept whole.",
    )
    gain_db: tuple[float, float] = Field((-6.0, 6.0), description="Range of the random gain, in dB.")
    gain_p: float = Field(0.8, ge=0.0, le=1.0, description="Probability of applying a random gain.")
    noise_snr_db: tuple[float, float] = Field(
        (10.0, 40.0), description="Range of the signal-to-noise ratio of additive Gaussian noise, in dB."
    )
    noise_p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of adding Gaussian noise.")
    time_mask: int = Field(20, ge=0, description="SpecAugment: maximum width in frames of each time mask (0 disables).")
    time_masks: int = Field(2, ge=0, description="SpecAugment: number of time masks.")
    freq_mask: int = Field(8, ge=0, description="SpecAugment: maximum width in mel bins of each frequency mask.")
    freq_masks: int = Field(2, ge=0, description="SpecAugment: number of frequency masks.")
    spec_augment_p: float = Field(0.8, ge=0.0, le=1.0, description="Probability of applying the SpecAugment masks.")

    # Masked spectrogram modelling.
    norm_patch_targets: bool = Field(
        True, description="Normalise each mel patch of the reconstruction target to zero mean, unit variance."
    )

    @model_validator(mode="after")
    def _check(self) -> AudioOptions:
        if self.n_mels % self.patch_freq:
            raise ValueError(f"patch_freq {self.patch_freq} must divide n_mels {self.n_mels}")
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} must divide width {self.width}")
        if self.width % 4:
            raise ValueError(f"width must be divisible by 4 (2-D sine-cosine positions), got {self.width}")
        if self.win_samples < 2 or self.hop_samples < 1:
            raise ValueError(
                f"win_ms {self.win_ms} / hop_ms {self.hop_ms} give {self.win_samples} / {self.hop_samples} samples "
                f"at {self.sample_rate} Hz; the window needs at least 2 samples and the hop 1"
            )
        nyquist = self.sample_rate / 2
        if (self.f_max or nyquist) > nyquist or self.f_min >= (self.f_max or nyquist):
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {nyquist:g} Hz")
        if self.max_frames < 1:
            raise ValueError(f"max_seconds {self.max_seconds} is shorter than one hop ({self.hop_ms} ms)")
        for name in ("gain_db", "noise_snr_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {getattr(self, name)}")
        return self

    @property
    def win_samples(self) -> int:
        """STFT window length in samples."""
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_samples(self) -> int:
        """STFT hop length in samples."""
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def n_fft(self) -> int:
        """FFT size: the window length rounded up to a power of two."""
        return 1 << max(1, math.ceil(math.log2(self.win_samples)))

    @property
    def max_samples(self) -> int:
        """Samples in ``max_seconds``."""
        return int(round(self.max_seconds * self.sample_rate))

    @property
    def max_frames(self) -> int:
        """Spectrogram frames kept at most: ``max_seconds / hop``."""
        return self.max_samples // self.hop_samples

    @property
    def crop_samples(self) -> int:
        """Samples of the random crop of a view."""
        seconds = min(self.crop_seconds or self.max_seconds, self.max_seconds)
        return max(1, int(round(seconds * self.sample_rate)))

    @property
    def freq_patches(self) -> int:
        """Patches along frequency, ``n_mels / patch_freq``."""
        return self.n_mels // self.patch_freq
