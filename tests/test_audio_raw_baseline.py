"""The audio raw-input baseline (``AudioProcessor.raw_features``): each mel bin's mean and std over time of the
prepared log-mel, checked against a log-mel computed here with numpy (own STFT, Hann window, centred frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from mmssl.eval.embed import raw_features
from mmssl.modality import SupportsRawFeatures
from mmssl_audio import AudioOptions, AudioProcessor, build_processor

RATE = 8000
OPTIONS = AudioOptions(sample_rate=RATE, n_mels=16, patch_freq=16, win_ms=32.0, hop_ms=16.0, width=16, heads=2)


def tone(freq: float, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = np.arange(int(seconds * RATE)) / RATE
    return torch.from_numpy((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32))


def numpy_log_mel(wave: np.ndarray, o: AudioOptions) -> np.ndarray:
    """log(mel power + 1e-6): periodic Hann window, reflect-padded centred frames, |rfft|^2, HTK mel filters."""
    n_fft, hop, win = o.n_fft, o.hop_samples, o.win_samples
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    power = np.stack([np.abs(np.fft.rfft(padded[i * hop : i * hop + n_fft] * window)) ** 2 for i in range(frames)])
    fbanks = AF.melscale_fbanks(n_fft // 2 + 1, o.f_min, RATE / 2, o.n_mels, RATE, norm=None, mel_scale="htk")
    return np.log(power @ fbanks.double().numpy() + 1e-6).T  # [n_mels, frames]


@pytest.fixture(scope="module")
def processor() -> AudioProcessor:
    return AudioProcessor(OPTIONS, mean=-3.0, std=2.0)


def test_mean_and_std_per_mel_bin_match_a_numpy_log_mel(processor: AudioProcessor) -> None:
    waves = [tone(440.0, 0.5), tone(1500.0, 0.3) + tone(300.0, 0.3, 0.1), torch.randn(2400) * 0.1]
    ours = processor.raw_features(processor.prepare(w) for w in waves)
    assert ours.shape == (3, 2 * OPTIONS.n_mels) and ours.dtype == torch.float32
    for row, wave in zip(ours, waves, strict=True):
        mel = (numpy_log_mel(wave.numpy(), OPTIONS) - -3.0) / 2.0  # the processor's normalisation
        expected = np.concatenate([mel.mean(axis=1), mel.std(axis=1)])
        np.testing.assert_allclose(row.numpy(), expected, rtol=1e-3, atol=1e-3)


def test_a_tone_peaks_in_its_mel_bin_and_the_features_ignore_length(processor: AudioProcessor) -> None:
    short, long = tone(1000.0, 0.5), tone(1000.0, 2.0)
    prepared = [processor.prepare(w) for w in (short, long, tone(250.0, 0.5))]
    rows = processor.raw_features(prepared)
    n = OPTIONS.n_mels
    hz = AF.melscale_fbanks(OPTIONS.n_fft // 2 + 1, 0.0, RATE / 2, n, RATE, norm=None, mel_scale="htk")
    bins = torch.linspace(0, RATE / 2, OPTIONS.n_fft // 2 + 1)
    expected_bin = int(hz[int(torch.argmin((bins - 1000.0).abs()))].argmax())
    assert int(rows[0, :n].argmax()) == expected_bin
    assert int(rows[2, :n].argmax()) < expected_bin  # a lower tone peaks lower
    # the same steady tone, four times longer: nearly the same level where the tone is (a flattened, zero-padded
    # spectrogram would differ in length); the silent bins differ a little through the edge frames
    near = slice(expected_bin - 1, expected_bin + 2)
    assert torch.allclose(rows[0, near], rows[1, near], atol=0.1)
    assert not torch.allclose(rows[0], rows[2], atol=0.5)


def test_the_evaluations_use_it_and_waveform_features_summarise_the_unnormalised_log_mel() -> None:
    wave_values = [tone(700.0, 0.4).numpy(), tone(2000.0, 0.25).numpy()]
    processor = build_processor(OPTIONS, wave_values)
    assert isinstance(processor, SupportsRawFeatures)
    through_eval = raw_features(processor, wave_values)
    assert through_eval is not None and through_eval.shape == (2, 2 * OPTIONS.n_mels)
    direct = processor.raw_features(processor.prepare(processor.decode(v)) for v in wave_values)
    assert torch.equal(through_eval, direct)

    waveform = AudioProcessor(OPTIONS.model_copy(update={"features": "waveform"}), 0.0, 1.0)
    plain = AudioProcessor(OPTIONS, 0.0, 1.0)  # mean 0, std 1: its prepared log-mel is the unnormalised one
    waves = [torch.from_numpy(v) for v in wave_values]
    assert torch.allclose(
        waveform.raw_features(waveform.prepare(w) for w in waves), plain.raw_features(plain.prepare(w) for w in waves)
    )


def test_rejects_what_is_not_a_prepared_spectrogram(processor: AudioProcessor) -> None:
    with pytest.raises(ValueError, match="prepared spectrograms"):
        processor.raw_features([torch.zeros(OPTIONS.n_mels + 1, 5)])
    assert processor.raw_features([]).shape == (0, 2 * OPTIONS.n_mels)
