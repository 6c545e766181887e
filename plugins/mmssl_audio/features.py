"""Log-mel spectrograms of waveforms: ``log(MelSpectrogram(wave) + 1e-6)``, frames along the last axis."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch import Tensor

from mmssl_audio.options import AudioOptions

#: Added to the mel power before the logarithm.
LOG_OFFSET = 1e-6


class LogMel:
    """The log-mel spectrogram of the options (power 2, Hann window, centred frames, HTK mel scale).

    A clip of ``S`` samples gives ``1 + S // hop`` frames, cut to ``max_frames``; clips shorter than one
    window are zero-padded to it first (so even a tiny clip gives at least one frame).
    """

    def __init__(self, options: AudioOptions) -> None:
        self.options = options
        self.transform = T.MelSpectrogram(
            sample_rate=options.sample_rate,
            n_fft=options.n_fft,
            win_length=options.win_samples,
            hop_length=options.hop_samples,
            f_min=options.f_min,
            f_max=options.f_max,
            n_mels=options.n_mels,
            power=2.0,
        )

    @torch.no_grad()
    def __call__(self, wave: Tensor) -> Tensor:
        """Shapes: wave [S] -> [n_mels, min(1 + S' // hop, max_frames)] with S' = max(S, n_fft // 2 + 1)."""
        minimum = self.options.n_fft // 2 + 1  # reflect padding of the centred STFT needs more samples than this
        if wave.shape[-1] < minimum:
            wave = F.pad(wave, (0, minimum - wave.shape[-1]))
        mel = self.transform(wave.float())
        return torch.log(mel + LOG_OFFSET)[..., : self.options.max_frames]
