"""Tests of the first-party audio modality plugin (``plugins/mmssl_audio``)."""

from __future__ import annotations

import gzip
import io
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.transforms as T
from pydantic import ValidationError
from tolerances import F32, F32_SCALAR

import mmssl_audio
from mmssl.data.sources import SOURCES
from mmssl.modality import Capabilities, MaskedInput, ModalityBatch, Processor
from mmssl_audio import AudioOptions, AudioProcessor, build_encoder, build_processor, load_processor
from mmssl_audio.asterisk import SOUNDS_ROOT, TRANSCRIPTS, clean_transcript

RATE = 16000


def tiny_options(**overrides: object) -> AudioOptions:
    values: dict[str, object] = {
        "n_mels": 16,
        "patch_freq": 8,
        "patch_time": 4,
        "max_seconds": 1.0,
        "width": 16,
        "depth": 1,
        "heads": 2,
    }
    values.update(overrides)
    return AudioOptions(**values)


def tone(seconds: float, freq: float = 440.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def random_clips(count: int, seed: int = 0, low: float = 0.2, high: float = 0.8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.uniform(low, high) * RATE))).astype(np.float32) for _ in range(count)]


def fitted(options: AudioOptions, count: int = 4) -> tuple[AudioProcessor, list[np.ndarray]]:
    clips = random_clips(count)
    return build_processor(options, clips), clips


# ----------------------------------------------------------------------------------------------- options


def test_options_validate() -> None:
    with pytest.raises(ValidationError, match="patch_freq 12 must divide n_mels 64"):
        AudioOptions(patch_freq=12)
    with pytest.raises(ValidationError, match="heads"):
        AudioOptions(width=32, heads=3)
    with pytest.raises(ValidationError, match="gain_db"):
        AudioOptions(gain_db=(6.0, -6.0))
    with pytest.raises(ValidationError):
        AudioOptions(unknown_field=1)
    with pytest.raises(ValidationError, match="f_max"):
        AudioOptions(sample_rate=8000, f_max=6000.0)
    o = AudioOptions()
    assert (o.win_samples, o.hop_samples, o.n_fft, o.max_frames) == (400, 160, 512, 400)
    for name, field in AudioOptions.model_fields.items():
        assert field.description, f"option {name} has no description"


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_wav_resamples_8k_to_16k(tmp_path: Path) -> None:
    wave8 = tone(0.5, rate=8000)
    sf.write(tmp_path / "a.wav", wave8, 8000, subtype="PCM_16")
    out = mmssl_audio.decode_audio(tmp_path / "a.wav", RATE)
    assert out.dtype == torch.float32 and out.ndim == 1
    assert out.shape[0] == 2 * len(wave8)  # 0.5 s at 16 kHz
    expected = tone(0.5, rate=RATE)
    middle = slice(200, -200)  # away from the resampler's edges
    np.testing.assert_allclose(out.numpy()[middle], expected[middle], atol=5e-3)

    # The same through str paths, bytes, an (array, rate) tuple; FLAC too.
    sf.write(tmp_path / "a.flac", wave8, 8000)
    for raw in (str(tmp_path / "a.wav"), (tmp_path / "a.wav").read_bytes(), tmp_path / "a.flac", (wave8, 8000)):
        again = mmssl_audio.decode_audio(raw, RATE)
        assert again.shape == out.shape, type(raw)
        torch.testing.assert_close(again, out, atol=1e-4, rtol=0)


def test_decode_stereo_downmix_and_arrays(tmp_path: Path) -> None:
    left, right = tone(0.25, 440.0), tone(0.25, 1000.0, amplitude=0.25)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    out = mmssl_audio.decode_audio(tmp_path / "stereo.wav", RATE)
    mono = (left + right) / 2
    assert out.shape == (len(left),)
    np.testing.assert_allclose(out.numpy(), mono, atol=1e-6)
    # Arrays are at the options' rate; either 2-D layout downmixes; int16 is scaled by 2**15.
    for raw in (np.stack([left, right]), np.stack([left, right], axis=1), torch.from_numpy(np.stack([left, right]))):
        np.testing.assert_allclose(mmssl_audio.decode_audio(raw, RATE).numpy(), mono, atol=1e-6)
    ints = (left * 32767).astype(np.int16)
    np.testing.assert_allclose(mmssl_audio.decode_audio(ints, RATE).numpy(), left, atol=1e-4)


def test_decode_errors_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        mmssl_audio.decode_audio(tmp_path / "nope.wav", RATE)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="text.wav"):
        mmssl_audio.decode_audio(tmp_path / "text.wav", RATE)
    with pytest.raises(ValueError, match="not encoded audio"):
        mmssl_audio.decode_audio(b"garbage bytes", RATE)
    with pytest.raises(ValueError, match="NaN"):
        mmssl_audio.decode_audio(np.array([0.0, np.nan], dtype=np.float32), RATE)
    with pytest.raises(ValueError, match="no samples"):
        mmssl_audio.decode_audio(np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(TypeError, match="int"):
        mmssl_audio.decode_audio(42, RATE)


# ------------------------------------------------------------------------------------ prepare / statistics


def reference_log_mel(wave: np.ndarray, options: AudioOptions) -> torch.Tensor:
    """Independent log-mel: torchaudio's MelSpectrogram with the window and hop written out."""
    mel = T.MelSpectrogram(
        sample_rate=RATE, n_fft=512, win_length=400, hop_length=160, n_mels=options.n_mels, power=2.0
    )(torch.from_numpy(wave))
    return torch.log(mel + 1e-6)


def test_prepare_shape_and_normalisation() -> None:
    options = tiny_options(max_seconds=2.0)
    processor, clips = fitted(options, count=5)
    reference = torch.cat([reference_log_mel(c, options).flatten() for c in clips]).double()
    assert processor.mean == pytest.approx(float(reference.mean()), **F32_SCALAR)
    assert processor.std == pytest.approx(float(reference.std(unbiased=False)), **F32_SCALAR)

    short = tone(0.5)
    out = processor.prepare(processor.decode(short))
    assert out.shape == (16, 1 + len(short) // 160) and out.dtype == torch.float32
    torch.testing.assert_close(out, (reference_log_mel(short, options) - processor.mean) / processor.std)
    long = processor.prepare(processor.decode(tone(3.0)))
    assert long.shape == (16, 200)  # the first max_seconds = 2 s: 200 hops
    assert torch.equal(long, processor.prepare(processor.decode(tone(2.0))))
    tiny = processor.prepare(processor.decode(np.zeros(10, dtype=np.float32)))
    assert tiny.shape[0] == 16 and tiny.shape[1] >= 1 and torch.isfinite(tiny).all()

    given = build_processor(tiny_options(mean=-3.0, std=2.0), corpus=None)
    assert (given.mean, given.std) == (-3.0, 2.0)


def test_stats_use_at_most_stats_samples() -> None:
    seen = []

    def corpus():
        for i, clip in enumerate(random_clips(10)):
            seen.append(i)
            yield clip

    build_processor(tiny_options(stats_samples=3), corpus())
    assert len(seen) <= 4


# ------------------------------------------------------------------------------------------------ augment


def test_augment_deterministic_per_seed() -> None:
    options = tiny_options(crop_seconds=0.5, noise_p=1.0, gain_p=1.0, spec_augment_p=1.0)
    processor, _ = fitted(options)
    wave = processor.decode(tone(0.9) + 0.05 * np.random.default_rng(1).standard_normal(14400).astype(np.float32))
    views = [processor.augment(wave, np.random.default_rng(seed)) for seed in (7, 7, 8)]
    assert all(v.shape == (16, 51) and v.dtype == torch.float32 for v in views)  # 0.5 s crop: 8000 samples
    assert torch.equal(views[0], views[1])
    assert not torch.equal(views[0], views[2])
    torch.manual_seed(0)  # torch's global RNG must play no part
    assert torch.equal(processor.augment(wave, np.random.default_rng(7)), views[0])

    plain = tiny_options(gain_p=0.0, noise_p=0.0, spec_augment_p=0.0)
    quiet = AudioProcessor(plain, processor.mean, processor.std)
    short = processor.decode(tone(0.3))
    torch.testing.assert_close(quiet.augment(short, np.random.default_rng(0)), quiet.prepare(short))


def test_spec_augment_masks_bands() -> None:
    options = tiny_options(gain_p=0.0, noise_p=0.0, spec_augment_p=1.0, time_mask=10, freq_mask=4)
    processor, _ = fitted(options)
    wave = processor.decode(tone(0.9))
    clean = processor.prepare(wave)
    masked_bins = set()
    for seed in range(6):
        view = processor.augment(wave, np.random.default_rng(seed))
        changed = view != clean
        assert torch.all(view[changed] == 0.0)  # masks set the normalised mean
        masked_bins.update(torch.nonzero(changed.all(dim=1)).flatten().tolist())
    assert masked_bins  # some frequency band was masked in some view


# ----------------------------------------------------------------------------------------- collate / mask


def short_and_long(processor: AudioProcessor) -> ModalityBatch:
    """A 0.5 s clip (51 frames) and a 0.9 s clip (91 frames), patch_time 4: padded to 92 frames."""
    return processor.collate([processor.prepare(processor.decode(tone(s))) for s in (0.5, 0.9)])


def test_collate_pads_and_token_padding_mask() -> None:
    processor, _ = fitted(tiny_options())
    batch = short_and_long(processor)
    assert isinstance(batch, ModalityBatch) and len(batch) == 2 and batch.keep is None
    mel, lengths = batch.data["mel"], batch.data["lengths"]
    assert mel.shape == (2, 1, 16, 92) and lengths.tolist() == [51, 91]
    assert torch.all(mel[0, :, :, 51:] == 0)
    # Time-major tokens, 2 frequency patches per time patch: 23 time patches -> 46 tokens. The short clip's
    # frames 0..50 cover time patches 0..12 (patch 12 = frames 48..51, partly real), so 26 real tokens.
    assert batch.padding_mask.shape == (2, 46)
    assert batch.padding_mask[0, :26].any().item() is False and batch.padding_mask[0, 26:].all()
    assert not batch.padding_mask[1].any()
    with pytest.raises(ValueError, match=r"\[16, T\]"):
        processor.collate([torch.zeros(8, 5)])


def manual_patches(mel: np.ndarray, lengths: list[int], pf: int, pt: int) -> np.ndarray:
    """Independent reference: time-major loops; frames past a row's length are zero; (pf, pt) flattened."""
    b, _, f, t = mel.shape
    out = []
    for row in range(b):
        spec = mel[row, 0].copy()
        spec[:, lengths[row] :] = 0
        patches = []
        for ti in range(t // pt):
            for fi in range(f // pf):
                patches.append(spec[fi * pf : (fi + 1) * pf, ti * pt : (ti + 1) * pt].reshape(-1))
        out.append(patches)
    return np.asarray(out)


@pytest.mark.parametrize("norm", [True, False])
def test_mask_counts_padding_and_targets(norm: bool) -> None:
    processor, _ = fitted(tiny_options(norm_patch_targets=norm))
    batch = short_and_long(processor)
    batch.data["mel"][0, :, :, 51:] = 7.0  # garbage in the padding must not reach the targets
    masked = processor.mask(batch, 0.75, torch.Generator().manual_seed(0))
    assert isinstance(masked, MaskedInput) and masked.kind == "continuous"
    n, k = 46, round(46 * 0.25)
    padding = batch.padding_mask
    assert masked.batch.keep.shape == (2, k)
    assert masked.mask.shape == (2, n) and masked.mask.dtype == torch.bool
    assert not (masked.mask & padding).any()  # padding is never scored
    for row in range(2):
        kept = masked.batch.keep[row]
        assert not masked.mask[row, kept].any()
        assert not padding[row, kept].any()  # 12 kept < 26 real tokens: only real tokens are kept
        assert int(masked.mask[row].sum()) == int((~padding[row]).sum()) - k
    assert int(masked.mask[1].sum()) == n - k

    expected = manual_patches(batch.data["mel"].numpy().astype(np.float64), [51, 91], 8, 4)
    if norm:
        expected = (expected - expected.mean(-1, keepdims=True)) / np.sqrt(
            expected.var(-1, ddof=1, keepdims=True) + 1e-6
        )
    assert masked.target.shape == (2, n, 32)
    np.testing.assert_allclose(masked.target.numpy(), expected, **F32)

    mel = batch.data["mel"]
    assert torch.equal(mmssl_audio.unpatchify(mmssl_audio.patchify(mel, 8, 4), 8, 4, 2), mel)


# ------------------------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encoder_with_and_without_keep(pool: str) -> None:
    options = tiny_options(pool=pool)
    processor, _ = fitted(options)
    encoder = build_encoder(options, processor).eval()
    batch = short_and_long(processor)
    with torch.no_grad():
        full = encoder(batch)
        assert full.tokens.shape == (2, 46, 16) and full.pooled.shape == (2, 16)
        assert torch.equal(full.padding_mask, batch.padding_mask)
        masked = processor.mask(batch, 0.75, torch.Generator().manual_seed(1))
        out = encoder(masked.batch)
        assert out.tokens.shape == (2, 12, 16) and torch.isfinite(out.pooled).all()
        # Changing hidden patches leaves the visible-only output unchanged.
        grid = mmssl_audio.patchify(batch.data["mel"], 8, 4)
        noisy = grid + masked.mask.unsqueeze(-1) * torch.randn_like(grid)
        data = dict(batch.data, mel=mmssl_audio.unpatchify(noisy, 8, 4, 2))
        again = encoder(ModalityBatch(data, batch.padding_mask, masked.batch.keep))
        torch.testing.assert_close(again.pooled, out.pooled)
    assert not any("position" in key for key in encoder.state_dict())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_padding_does_not_change_the_pooled_output(pool: str) -> None:
    options = tiny_options(pool=pool, depth=2)
    processor, _ = fitted(options)
    encoder = build_encoder(options, processor).eval()
    short = processor.prepare(processor.decode(tone(0.5)))
    with torch.no_grad():
        alone = encoder(processor.collate([short])).pooled[0]
        batch = short_and_long(processor)
        together = encoder(batch).pooled[0]
        torch.testing.assert_close(together, alone, **F32)
        batch.data["mel"][0, :, :, 51:] = torch.randn(1, 16, 41) * 10  # other "audio" in the padding
        changed = encoder(batch).pooled
        torch.testing.assert_close(changed[0], together, **F32)
        batch.data["mel"][0, :, :, :51] += 1.0  # while the real frames do matter
        assert not torch.allclose(encoder(batch).pooled[0], together)


# ------------------------------------------------------------------------------------- save/load, plugin


def test_processor_save_load_round_trip(tmp_path: Path) -> None:
    options = tiny_options()
    processor, clips = fitted(options)
    processor.save(tmp_path)
    assert (tmp_path / "audio.json").is_file()
    loaded = load_processor(options, tmp_path)
    assert (loaded.mean, loaded.std) == (processor.mean, processor.std)
    wave = processor.decode(clips[1])
    assert torch.equal(loaded.prepare(wave), processor.prepare(wave))
    with pytest.raises(ValueError, match="n_mels"):
        load_processor(tiny_options(n_mels=32), tmp_path)
    with pytest.raises(FileNotFoundError, match="audio.json"):
        load_processor(options, tmp_path / "missing")


def test_plugin_found_through_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="mmssl.modalities") if ep.name == "audio"]
    plugin = ep.load()  # (mmssl.plugins.get_modality would import every installed plugin: slow)
    assert plugin is mmssl_audio.plugin
    assert plugin.capabilities == Capabilities(views=True, masking="continuous", pairing=True)
    assert plugin.description and "\n" not in plugin.description
    options = plugin.parse_options({"n_mels": 16, "patch_freq": 8, "patch_time": 4, "width": 16, "heads": 2})
    processor = plugin.build_processor(options, random_clips(2))
    assert isinstance(processor, Processor)
    assert isinstance(plugin.build_encoder(options, processor), torch.nn.Module)
    assert "asterisk_prompts" in SOURCES.names()


# ------------------------------------------------------------------------------------------------ sources


def load_prompts(**options: object):
    kind = SOURCES.get("asterisk_prompts")
    return kind.load(kind.options(**options), Path("."))


def test_prompt_source_on_a_small_folder(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    for name in ("hello", "beep", "digits/1", "digits/2", "untranscribed"):
        sf.write(tmp_path / f"{name}.wav", tone(0.1, rate=8000), 8000)
    transcripts = tmp_path / "sounds.txt.gz"
    with gzip.open(transcripts, "wt") as f:
        f.write("; a comment\n\nhello: Hello  there [waves].\nbeep: [a beep]\ndigits/1: one\ndigits/2: two\n")
    rows = load_prompts(roots=[str(tmp_path)], transcripts=[str(transcripts)], split="all").rows
    assert [(r["name"], r["text"]) for r in rows] == [
        ("digits/1", "one"),
        ("digits/2", "two"),
        ("hello", "Hello there ."),
    ]
    assert all(isinstance(r["audio"], Path) and r["audio"].is_file() for r in rows)
    with_beep = load_prompts(roots=[str(tmp_path)], transcripts=[str(transcripts)], split="all", speech_only=False)
    assert "beep" in [r["name"] for r in with_beep.rows]
    assert clean_transcript("(1 second of silence)") == "" and clean_transcript("at [@]") == "at"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_prompts(roots=[str(tmp_path / "nowhere")], transcripts=[str(transcripts)])


@pytest.mark.skipif(not Path(SOUNDS_ROOT).is_dir() or not Path(TRANSCRIPTS).is_file(), reason="no Asterisk prompts")
def test_real_asterisk_prompts() -> None:
    train, test, everything = (load_prompts(split=s) for s in ("train", "test", "all"))
    assert len(train) + len(test) == len(everything) > 500
    assert 0.1 < len(test) / len(everything) < 0.3
    assert not {r["name"] for r in train.rows} & {r["name"] for r in test.rows}
    assert [r["name"] for r in load_prompts(split="test").rows] == [r["name"] for r in test.rows]
    assert any("/" in r["name"] for r in everything.rows)  # subfolders (digits/, letters/, ...)
    for row in everything.rows:
        assert row["audio"].is_file() and row["text"].strip() and "[" not in row["text"]
    digits = {r["name"]: r["text"] for r in everything.rows if r["name"].startswith("digits/")}
    assert digits.get("digits/1") == "one"
    assert len(load_prompts(split="train", limit=5)) == 5

    processor = AudioProcessor(AudioOptions(), mean=-6.0, std=5.0)
    one = processor.decode(everything.rows[0]["audio"])
    info = sf.info(str(everything.rows[0]["audio"]))
    assert info.samplerate == 8000
    assert abs(one.shape[0] - 2 * info.frames) <= 1 and one.abs().max() > 0.01  # resampled to 16 kHz, not silent
    batch = processor.collate([processor.prepare(processor.decode(r["audio"])) for r in test.rows[:4]])
    assert batch.data["mel"].shape[:3] == (4, 1, 64) and torch.isfinite(batch.data["mel"]).all()


def test_bytes_of_a_real_file_decode_like_the_path() -> None:
    file = Path(SOUNDS_ROOT) / "digits" / "1.wav"
    if not file.is_file():
        pytest.skip("no Asterisk prompts")
    with open(file, "rb") as handle:
        data = handle.read()
    torch.testing.assert_close(
        mmssl_audio.decode_audio(io.BytesIO(data).getvalue(), RATE), mmssl_audio.decode_audio(file, RATE)
    )
