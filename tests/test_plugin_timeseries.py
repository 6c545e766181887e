"""Tests of the first-party time-series modality plugin (``plugins/mmssl_timeseries``)."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from tolerances import F32

import mmssl_timeseries as ts
from mmssl.modality import Capabilities, MaskedInput, ModalityBatch, Processor

ROOT = Path(__file__).resolve().parents[1]
HAS_PARQUET = any(importlib.util.find_spec(engine) for engine in ("pyarrow", "fastparquet"))


def tiny_options(**overrides: object):
    values: dict[str, object] = {
        "channels": 2, "patch_len": 4, "max_length": 64, "width": 16, "depth": 1, "heads": 2, "instance_norm": True
    }
    values.update(overrides)
    return ts.TimeSeriesOptions(**values)


def random_series(channels: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((channels, length)) * 3 + rng.uniform(-5, 5, (channels, 1))).astype(np.float32)


def batch_of(processor, series: list[np.ndarray]) -> ModalityBatch:
    return processor.collate([processor.prepare(processor.decode(s)) for s in series])


# ----------------------------------------------------------------------------------------------- options


def test_options_validate() -> None:
    with pytest.raises(ValidationError, match="non-overlapping"):
        ts.TimeSeriesOptions(patch_len=8, stride=4)
    assert ts.TimeSeriesOptions(patch_len=8, stride=8).stride == 8
    with pytest.raises(ValidationError, match="heads 3 must divide width 16"):
        ts.TimeSeriesOptions(width=16, heads=3)
    with pytest.raises(ValidationError, match="crop_scale"):
        ts.TimeSeriesOptions(crop_scale=(0.9, 0.5))
    with pytest.raises(ValidationError, match="patch_len >= 2"):
        ts.TimeSeriesOptions(patch_len=1)
    with pytest.raises(ValidationError):
        ts.TimeSeriesOptions(unknown=1)
    for name, field in ts.TimeSeriesOptions.model_fields.items():
        assert field.description, f"option {name} has no description"


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_npy_csv_parquet_list_and_arrays(tmp_path: Path) -> None:
    series = random_series(3, 11)
    processor = ts.build_processor(tiny_options(channels=3))
    np.save(tmp_path / "a.npy", series)
    frame = pd.DataFrame(series.T.astype(np.float64), columns=["x", "y", "z"])  # columns = channels, rows = time
    frame.to_csv(tmp_path / "header.csv", index=False)
    frame.to_csv(tmp_path / "plain.csv", index=False, header=False)
    parquet = [tmp_path / "a.parquet"] if HAS_PARQUET else []
    if HAS_PARQUET:
        frame.to_parquet(tmp_path / "a.parquet")
    for raw in (
        series,
        series.astype(np.float64),
        series.tolist(),
        torch.from_numpy(series),
        frame,
        tmp_path / "a.npy",
        str(tmp_path / "a.npy"),
        tmp_path / "header.csv",
        tmp_path / "plain.csv",
        *parquet,
    ):
        out = processor.decode(raw)
        assert out.dtype == np.float32 and out.shape == (3, 11), type(raw)
        np.testing.assert_allclose(out, series, rtol=1e-6, atol=1e-6)

    uni = ts.build_processor(tiny_options(channels=1))
    for raw in ([1.0, 2.0, 3.0], np.array([1, 2, 3]), [[1.0, 2.0, 3.0]]):
        np.testing.assert_array_equal(uni.decode(raw), [[1.0, 2.0, 3.0]])
    np.save(tmp_path / "u.npy", np.arange(5.0))
    pd.DataFrame({"v": np.arange(5.0)}).to_csv(tmp_path / "u.csv", index=False)
    for raw in (tmp_path / "u.npy", tmp_path / "u.csv"):
        np.testing.assert_array_equal(uni.decode(raw), np.arange(5.0)[None])


@pytest.mark.skipif(HAS_PARQUET, reason="checks the message when no Parquet engine is installed")
def test_decode_parquet_without_engine_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"a\.parquet.*pip install pyarrow"):
        ts.build_processor(tiny_options()).decode(tmp_path / "a.parquet")


def test_decode_trims_nan_tail_only() -> None:
    processor = ts.build_processor(tiny_options(channels=2))
    padded = np.array([[1.0, 2.0, 3.0, np.nan, np.nan], [4.0, 5.0, 6.0, np.nan, np.nan]])
    np.testing.assert_array_equal(processor.decode(padded), [[1, 2, 3], [4, 5, 6]])
    partial = np.array([[1.0, 2.0, 3.0, 7.0, np.nan], [4.0, 5.0, 6.0, np.nan, np.nan]])
    with pytest.raises(ValueError, match="NaN or infinite values inside"):
        processor.decode(partial)
    with pytest.raises(ValueError, match="NaN or infinite values inside"):
        processor.decode(np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="empty"):
        processor.decode(np.full((2, 4), np.nan))


def test_decode_errors_name_the_file_and_shape(tmp_path: Path) -> None:
    processor = ts.build_processor(tiny_options(channels=3))
    np.save(tmp_path / "two.npy", random_series(2, 9))
    with pytest.raises(ValueError, match=r"two\.npy.*expected shape \[3, L\] for 3 channel\(s\), got \[2, 9\]"):
        processor.decode(tmp_path / "two.npy")
    pd.DataFrame(random_series(2, 9).T, columns=["a", "b"]).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(ValueError, match=r"two\.csv.*expected shape \[3, L\].*got \[2, 9\]"):
        processor.decode(tmp_path / "two.csv")
    with pytest.raises(ValueError, match=r"time-major.*transpose"):
        processor.decode(random_series(3, 9).T)
    with pytest.raises(ValueError, match=r"expected shape \[3, L\]"):
        processor.decode([1.0, 2.0, 3.0])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        processor.decode(tmp_path / "nope.csv")
    (tmp_path / "words.csv").write_text("a,b,c\n1,2,x\n")
    with pytest.raises(ValueError, match="words.csv"):
        processor.decode(tmp_path / "words.csv")
    (tmp_path / "a.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"a\.txt.*\.npy, \.csv or \.parquet"):
        processor.decode(tmp_path / "a.txt")
    with pytest.raises(TypeError, match="dict"):
        processor.decode({"values": [1, 2]})


# -------------------------------------------------------------------------------- normalisation (RevIN)


def test_instance_normalisation_is_reversible() -> None:
    processor = ts.build_processor(tiny_options(channels=2, max_length=40))
    series = processor.decode(random_series(2, 50, seed=4))
    prepared = processor.prepare(series)
    assert prepared.dtype == torch.float32 and prepared.shape == (2, 40)  # cut to max_length
    torch.testing.assert_close(prepared.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(prepared.std(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    normalized, stats = processor.normalize(series)
    assert torch.equal(normalized, prepared)
    assert stats.mean.shape == (2, 1) and stats.std.shape == (2, 1)
    np.testing.assert_allclose(processor.denormalize(normalized, stats).numpy(), series[:, :40], **F32)
    np.testing.assert_allclose(ts.denormalize(normalized.numpy(), stats), series[:, :40], **F32)
    np.testing.assert_allclose(stats.mean[:, 0], series[:, :40].mean(1), rtol=1e-5)

    flat = processor.prepare(np.full((2, 8), 3.0, dtype=np.float32))  # constant channels: zeros, no division by 0
    assert torch.equal(flat, torch.zeros(2, 8))
    raw = ts.build_processor(tiny_options(instance_norm=False, dataset_norm=False))
    assert torch.equal(raw.prepare(series), torch.from_numpy(series[:, :64]))


def test_dataset_normalisation_uses_training_statistics(tmp_path: Path) -> None:
    """With instance_norm off, each channel is scaled by the training set's mean/std (numpy over all steps)."""
    corpus = [random_series(2, n, seed=n) * np.array([[1.0], [50.0]]) + np.array([[3.0], [-7.0]]) for n in (30, 40)]
    options = tiny_options(instance_norm=False, max_length=35)
    processor = ts.build_processor(options, corpus)
    steps = np.concatenate([c[:, :35] for c in corpus], axis=1).astype(np.float64)
    np.testing.assert_allclose(processor.channel_mean, steps.mean(1), **F32)
    np.testing.assert_allclose(processor.channel_std, steps.std(1), **F32)
    series = corpus[1]
    expected = (series[:, :35] - steps.mean(1)[:, None]) / steps.std(1)[:, None]
    np.testing.assert_allclose(processor.prepare(series).numpy(), expected, **F32)
    processor.save(tmp_path)
    loaded = ts.load_processor(options, tmp_path)
    assert torch.equal(loaded.prepare(series), processor.prepare(series))
    with pytest.raises(ValueError, match="dataset_norm needs the training series"):
        ts.build_processor(options, None)


# ------------------------------------------------------------------------------------------------ augment


def test_augment_deterministic_per_seed() -> None:
    options = tiny_options(crop_p=0.5, warp_p=0.5, permute_p=0.5)
    processor = ts.build_processor(options)
    series = processor.decode(random_series(2, 30, seed=1))
    views = [processor.augment(series, np.random.default_rng(seed)) for seed in (7, 7, 8)]
    assert all(v.shape == (2, 30) and v.dtype == torch.float32 for v in views)
    assert torch.equal(views[0], views[1])
    assert not torch.equal(views[0], views[2])
    torch.manual_seed(0)  # torch's and Python's global generators play no part
    np.random.seed(0)
    assert torch.equal(processor.augment(series, np.random.default_rng(7)), views[0])


def test_each_augmentation_keeps_the_shape() -> None:
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal((3, 40)), axis=1)
    crop = ts.random_crop(x, (0.5, 0.5), np.random.default_rng(1))
    assert crop.shape == x.shape
    assert not np.allclose(crop, x)
    assert np.array_equal(ts.random_crop(x, (1.0, 1.0), np.random.default_rng(1)), x)
    warp = ts.time_warp(x, 0.5, 4, np.random.default_rng(2))
    assert warp.shape == x.shape and np.allclose(warp[:, [0, -1]], x[:, [0, -1]])
    perm = ts.permute_segments(x, 5, np.random.default_rng(3))
    assert perm.shape == x.shape and np.array_equal(np.sort(perm, axis=1), np.sort(x, axis=1))
    column = {tuple(col) for col in x.T}
    assert all(tuple(col) in column for col in perm.T)  # channels move together
    assert ts.random_view(x[:, :1], tiny_options(channels=3, crop_p=1, warp_p=1, permute_p=1), rng).shape == (3, 1)

    quiet = tiny_options(jitter_p=0, scaling_p=0, crop_p=0, warp_p=0, permute_p=0)
    assert np.array_equal(ts.random_view(x, quiet, rng), x)
    scaled = ts.random_view(x, quiet.model_copy(update={"scaling_p": 1.0, "scaling_sigma": 0.5}), rng)
    ratio = scaled / x
    assert np.allclose(ratio, ratio[:, :1])  # one factor per channel


# ----------------------------------------------------------------------------------------- collate / mask


def test_collate_pads_to_patch_multiple_with_token_padding_mask() -> None:
    processor = ts.build_processor(tiny_options(channels=2, patch_len=4))
    series = [random_series(2, n, seed=n) for n in (5, 9, 12)]
    batch = batch_of(processor, series)
    values = batch.data["values"]
    assert isinstance(batch.data, dict) and values.shape == (3, 2, 12) and len(batch) == 3
    for row, s in zip(values, series, strict=True):
        torch.testing.assert_close(row[:, : s.shape[1]], processor.prepare(s))
        assert torch.all(row[:, s.shape[1] :] == 0)
    # channel-major tokens: [c0 p0, c0 p1, c0 p2, c1 p0, c1 p1, c1 p2]; length 5 has real patches 0 and 1
    expected = torch.tensor([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(batch.padding_mask, expected)

    same = batch_of(processor, [random_series(2, 10, seed=i) for i in range(3)])
    assert same.data["values"].shape == (3, 2, 12) and same.padding_mask is None
    with pytest.raises(ValueError, match="empty"):
        processor.collate([])
    with pytest.raises(ValueError, match=r"\[2, L\]"):
        processor.collate([torch.zeros(3, 4)])


def manual_patches(values: np.ndarray, p: int) -> np.ndarray:
    """Independent reference: loop over channels, then patches (channel-major)."""
    out = []
    for row in values:
        out.append([row[c, n * p : (n + 1) * p] for c in range(row.shape[0]) for n in range(row.shape[1] // p)])
    return np.asarray(out)


@pytest.mark.parametrize("norm", [True, False])
def test_mask_targets_and_padding_never_scored(norm: bool) -> None:
    processor = ts.build_processor(tiny_options(channels=2, patch_len=4, norm_patch_targets=norm))
    batch = batch_of(processor, [random_series(2, n, seed=n) for n in (6, 16, 9, 13)])
    masked = processor.mask(batch, 0.6, torch.Generator().manual_seed(0))
    assert isinstance(masked, MaskedInput) and masked.kind == "continuous"
    n_tokens = 2 * 4
    k = round(n_tokens * 0.4)
    assert masked.batch.keep.shape == (4, k) and masked.mask.shape == (4, n_tokens)
    assert masked.batch.padding_mask is batch.padding_mask
    assert not (masked.mask & batch.padding_mask).any()
    for row in range(4):
        assert not masked.mask[row, masked.batch.keep[row]].any()
        real = int((~batch.padding_mask[row]).sum())
        kept_real = int((~batch.padding_mask[row, masked.batch.keep[row]]).sum())
        assert kept_real == min(k, real)  # padding is hidden (dropped) before any real token
        assert int(masked.mask[row].sum()) == real - kept_real

    expected = manual_patches(batch.data["values"].numpy().astype(np.float64), 4)
    if norm:
        expected = (expected - expected.mean(-1, keepdims=True)) / np.sqrt(
            expected.var(-1, ddof=1, keepdims=True) + 1e-6
        )
    assert masked.target.shape == (4, n_tokens, 4)
    np.testing.assert_allclose(masked.target.numpy(), expected, **F32)
    values = batch.data["values"]
    assert torch.equal(ts.unpatchify(ts.patchify(values, 4), 2), values)

    full = processor.mask(batch_of(processor, [random_series(2, 8, seed=i) for i in range(2)]), 0.5)
    assert full.mask.sum(1).tolist() == [2, 2]  # 2 channels x 2 patches, half hidden


# ------------------------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encoder_with_and_without_keep(pool: str) -> None:
    options = tiny_options(pool=pool)
    processor = ts.build_processor(options)
    encoder = ts.build_encoder(options, processor).eval()
    batch = batch_of(processor, [random_series(2, 16, seed=i) for i in range(3)])
    with torch.no_grad():
        full = encoder(batch)
        assert full.tokens.shape == (3, 8, 16) and full.pooled.shape == (3, 16) and full.padding_mask is None
        masked = processor.mask(batch, 0.75, torch.Generator().manual_seed(1))
        out = encoder(masked.batch)
        assert out.tokens.shape == (3, 2, 16) and out.pooled.shape == (3, 16)

        # Changing hidden patches leaves the output unchanged; changing a kept one does not.
        patches = ts.patchify(batch.data["values"], 4)
        noisy = patches + masked.mask.unsqueeze(-1) * torch.randn_like(patches) * 5
        out2 = encoder(ModalityBatch({"values": ts.unpatchify(noisy, 2)}, keep=masked.batch.keep))
        torch.testing.assert_close(out2.tokens, out.tokens)
        torch.testing.assert_close(out2.pooled, out.pooled)
        changed = patches.clone()
        changed[0, masked.batch.keep[0, 0]] += 1.0
        out3 = encoder(ModalityBatch({"values": ts.unpatchify(changed, 2)}, keep=masked.batch.keep))
        assert not torch.allclose(out3.tokens[0], out.tokens[0])

        # Channel identity matters: swapping the two channels changes the embedding.
        swapped = encoder(ModalityBatch({"values": batch.data["values"].flip(1)}))
        assert not torch.allclose(swapped.pooled, full.pooled)
    assert not any("position" in name for name in encoder.state_dict())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_padded_and_unpadded_pooled_outputs_match(pool: str) -> None:
    options = tiny_options(pool=pool, depth=2)
    processor = ts.build_processor(options)
    encoder = ts.build_encoder(options, processor).eval()
    short, long = random_series(2, 10, seed=1), random_series(2, 23, seed=2)
    with torch.no_grad():
        alone = encoder(batch_of(processor, [short]))
        padded_batch = batch_of(processor, [short, long])
        together = encoder(padded_batch)
    assert padded_batch.padding_mask is not None and padded_batch.padding_mask[0].sum() == 2 * 3
    torch.testing.assert_close(together.pooled[0], alone.pooled[0], **F32)
    real = ~padded_batch.padding_mask[0]
    torch.testing.assert_close(together.tokens[0, real], alone.tokens[0], **F32)


def test_mae_objective_step_on_padded_batch() -> None:
    from mmssl.objectives.base import BuildInfo
    from mmssl.objectives.masked import MaskedOptions, build_masked

    options = tiny_options()
    processor = ts.build_processor(options)
    encoder = ts.build_encoder(options, processor)
    batch = batch_of(processor, [random_series(2, n, seed=n) for n in (7, 16, 12)])
    info = BuildInfo(widths={"timeseries": 16}, embed_dim=8, processors={"timeseries": processor}, probes={})
    info.probes["timeseries"] = batch
    objective = build_masked(MaskedOptions(name="mae", modality="timeseries", decoder_width=16, decoder_heads=2), info)
    masked = processor.mask(batch, 0.5, torch.Generator().manual_seed(0))
    out = encoder(masked.batch)
    pred = objective.decoder(out.tokens, masked.batch.keep, masked.mask.shape[1], batch.padding_mask)
    assert pred.shape == masked.target.shape
    loss = ((pred - masked.target) ** 2).mean(-1)[masked.mask].mean()
    loss.backward()
    assert encoder.embedder.proj.weight.grad is not None and torch.isfinite(loss)


# ------------------------------------------------------------------------------------- save/load, plugin


def test_processor_save_load_round_trip(tmp_path: Path) -> None:
    options = tiny_options()
    processor = ts.build_processor(options, corpus=None)
    processor.save(tmp_path)
    assert (tmp_path / "timeseries.json").is_file()
    loaded = ts.load_processor(options, tmp_path)
    assert loaded.state() == processor.state()
    series = processor.decode(random_series(2, 13, seed=5))
    assert torch.equal(loaded.prepare(series), processor.prepare(series))
    with pytest.raises(ValueError, match="channels"):
        ts.load_processor(tiny_options(channels=3), tmp_path)
    with pytest.raises(ValueError, match="patch_len"):
        ts.load_processor(tiny_options(patch_len=8), tmp_path)
    with pytest.raises(FileNotFoundError, match="timeseries.json"):
        ts.load_processor(options, tmp_path / "missing")


def test_plugin_found_through_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="mmssl.modalities") if ep.name == "timeseries"]
    plugin = ep.load()  # (mmssl.plugins.get_modality would import every other plugin too: slow)
    assert plugin is ts.plugin and plugin.name == "timeseries"
    assert plugin.capabilities == Capabilities(views=True, masking="continuous", pairing=True)
    assert plugin.description and "\n" not in plugin.description
    options = plugin.parse_options(
        {"channels": 1, "patch_len": 5, "width": 16, "heads": 2, "depth": 1, "instance_norm": True}
    )
    processor = plugin.build_processor(options, iter([]))
    assert isinstance(processor, Processor)
    assert isinstance(plugin.build_encoder(options, processor), torch.nn.Module)


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.parametrize(
    ("name", "rows", "shape", "classes"),
    [
        ("GunPoint", (50, 150), (1, 150), ["1", "2"]),
        ("BasicMotions", (40, 40), (6, 100), ["badminton", "running", "standing", "walking"]),
    ],
)
def test_ucr_uea_source(name: str, rows: tuple[int, int], shape: tuple[int, int], classes: list[str]) -> None:
    from mmssl.data.sources import SOURCES

    kind = SOURCES.get("ucr_uea")
    for split, count in zip(("train", "test"), rows, strict=True):
        source = kind.load(kind.options(name=name, split=split), ROOT)
        assert len(source) == count and source.class_names == classes
        assert source.columns == ["series", "label"]
        first = source[0]
        assert first["series"].dtype == np.float32 and first["series"].shape == shape
        labels = np.array(source.column("label"))
        assert set(labels.tolist()) == set(range(len(classes)))  # both splits hold every class, one mapping
    limited = kind.load(kind.options(name=name, split="train", limit=7), ROOT)
    assert len(limited) == 7

    options = tiny_options(channels=shape[0], patch_len=10, max_length=shape[1])
    processor = ts.build_processor(options)
    batch = batch_of(processor, [row["series"] for row in limited.rows])
    assert batch.data["values"].shape == (7, *shape) and batch.padding_mask is None
    with torch.no_grad():
        out = ts.build_encoder(options, processor).eval()(batch)
    assert out.tokens.shape == (7, shape[0] * shape[1] // 10, 16) and torch.isfinite(out.pooled).all()


def test_ucr_uea_unequal_length_archive_keeps_each_series_length() -> None:
    """JapaneseVowels (bundled with sktime): 270 / 370 rows of 12 channels and 7 to 29 steps, which sktime cannot
    stack into one array; each row keeps its own length, and a batch pads to its longest series."""
    from mmssl.data.sources import SOURCES

    kind = SOURCES.get("ucr_uea")
    train = kind.load(kind.options(name="JapaneseVowels", split="train"), ROOT)
    assert len(train) == 270 and len(train.class_names) == 9
    lengths = [row["series"].shape[1] for row in train.rows]
    assert {row["series"].shape[0] for row in train.rows} == {12} and min(lengths) == 7 and max(lengths) == 26
    assert all(row["series"].dtype == np.float32 and np.isfinite(row["series"]).all() for row in train.rows)
    assert len(kind.load(kind.options(name="JapaneseVowels", split="test"), ROOT)) == 370

    options = tiny_options(channels=12, patch_len=2, max_length=30)
    rows = [train.rows[lengths.index(7)]["series"], train.rows[lengths.index(26)]["series"]]
    batch = batch_of(ts.build_processor(options), rows)
    assert batch.data["values"].shape == (2, 12, 26) and batch.padding_mask is not None


def test_ucr_uea_unknown_name_is_a_clear_error() -> None:
    from mmssl.data.sources import SOURCES

    kind = SOURCES.get("ucr_uea")
    with pytest.raises(ValueError, match="NoSuchArchive"):
        kind.load(kind.options(name="NoSuchArchive", split="train"), ROOT)


def test_dilated_encoder_tokens_are_channel_patches_and_ignore_hidden_patches() -> None:
    options = tiny_options(channels=2, patch_len=4, encoder="dilated", depth=2, width=8)
    encoder = ts.build_encoder(options).eval()
    values = torch.from_numpy(random_series(2, 16, seed=3)).float()[None].repeat(3, 1, 1)  # [3, 2, 16]
    with torch.no_grad():
        out = encoder(ModalityBatch({"values": values}))
        assert out.tokens.shape == (3, 8, 8) and out.pooled.shape == (3, 8)
        # Independent: each channel alone through the blocks, averaged over its 4-step patches.
        for c in range(2):
            features = encoder.blocks(encoder.input(values[:1, c : c + 1]))[0]  # [D, 16]
            for n in range(4):
                cell = features[:, 4 * n : 4 * n + 4].mean(1) + encoder.channel_embedding[c]
                torch.testing.assert_close(out.tokens[0, c * 4 + n], torch.nn.functional.layer_norm(cell, (8,)), **F32)
        keep = torch.tensor([[0, 5, 6]]).repeat(3, 1)
        masked = encoder(ModalityBatch({"values": values}, keep=keep))
        noisy = values.clone()
        noisy[:, 0, 4:8] += 5.0  # patch 1 of channel 0 (token 1) is hidden
        torch.testing.assert_close(encoder(ModalityBatch({"values": noisy}, keep=keep)).tokens, masked.tokens, **F32)
        noisy[:, 1, 4:8] += 5.0  # patch 1 of channel 1 (token 5) is kept
        assert not torch.allclose(encoder(ModalityBatch({"values": noisy}, keep=keep)).tokens, masked.tokens)


def test_channel_means_match_a_loop_with_keep_and_padding() -> None:
    from mmssl_timeseries.encoder import channel_means

    torch.manual_seed(0)
    b, c, n, d, k = 3, 4, 5, 6, 9
    full = torch.randn(b, c * n, d)
    keep = torch.stack([torch.randperm(c * n)[:k] for _ in range(b)])
    tokens = torch.gather(full, 1, keep[..., None].expand(-1, -1, d))
    padding = torch.rand(b, k) < 0.3
    expected = torch.zeros(b, c, d)
    for row in range(b):
        for channel in range(c):
            chosen = [j for j in range(k) if int(keep[row, j]) // n == channel and not padding[row, j]]
            if chosen:
                expected[row, channel] = tokens[row, chosen].mean(0)
    torch.testing.assert_close(channel_means(tokens, padding, keep, c, n), expected.flatten(1), **F32)
    torch.testing.assert_close(
        channel_means(full, None, None, c, n), full.view(b, c, n, d).mean(2).flatten(1), **F32
    )


def test_pool_channels_gives_one_mean_per_channel_and_works_with_masking() -> None:
    options = tiny_options(channels=3, pool="channels")
    processor = ts.build_processor(options)
    encoder = ts.build_encoder(options, processor).eval()
    batch = batch_of(processor, [random_series(3, 40, seed) for seed in range(2)])
    with torch.no_grad():
        out = encoder(batch)
    assert encoder.pooled_width == 3 * 16 and out.pooled.shape == (2, 48)
    torch.testing.assert_close(out.pooled, out.tokens.view(2, 3, 10, 16).mean(2).flatten(1), **F32)
    masked = processor.mask(batch, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        kept = encoder(masked.batch)
    assert kept.pooled.shape == (2, 48) and torch.isfinite(kept.pooled).all()


def test_pool_channels_is_refused_for_the_dilated_encoder() -> None:
    with pytest.raises(ValidationError, match="pool: channels is for encoder: transformer"):
        tiny_options(pool="channels", encoder="dilated")
