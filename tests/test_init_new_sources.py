"""Data no shipped recipe uses, for the recipes ``mmssl init`` writes: ``spoken_commands`` (ten command words by
espeak-ng, held-out test voices) and ``noto_emoji`` (Google's Noto emoji artwork, the 10 emoji categories)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from mmssl.compiler import compile_recipe
from mmssl.data.sources import SOURCES, Source
from mmssl.datasets.digits import COMMAND_WORDS
from mmssl.datasets.npm import find_npm_package
from mmssl.datasets.twemoji import CATEGORIES, GOOGLE, TWITTER
from mmssl.init import Column, Profile, init_source, recipe_text
from mmssl_image.decode import decode_image

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (`apt-get install espeak-ng`)"
)


def installed(package: str) -> Path | None:
    try:
        return find_npm_package(package)
    except FileNotFoundError:
        return None


needs_noto = pytest.mark.skipif(
    installed(GOOGLE.package) is None,
    reason=f"npm package {GOOGLE.package} is not installed (run `bash scripts/install-data.sh`)",
)


def load(source: str, **options: object) -> Source:
    kind = SOURCES.get(source)
    return kind.load(kind.options.model_validate(options), Path("."))


def small_commands(cache: Path) -> dict:
    """Two train voices and one held-out test voice, one variant, speed and pitch: 30 clips (~1 s to synthesise)."""
    return {
        "voices": ["en-us", "en-gb"],
        "test_voices": ["en-gb-scotland"],
        "variants": [""],
        "speeds": [175],
        "pitches": [50],
        "cache": str(cache),
    }


# ------------------------------------------------------------------------------------------- spoken commands


@needs_espeak
def test_spoken_commands_rows_are_the_words_in_their_voices(tmp_path: Path) -> None:
    options = small_commands(tmp_path)
    train, test = load("spoken_commands", **options), load("spoken_commands", split="test", **options)
    assert (
        train.class_names == test.class_names == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    )
    assert len(train.rows) == 20 and len(test.rows) == 10
    assert {r["voice"] for r in train.rows} == {"en-us", "en-gb"} and {r["voice"] for r in test.rows} == {
        "en-gb-scotland"
    }
    for row in train.rows + test.rows:
        assert row["text"] == COMMAND_WORDS[row["label"]] == Path(row["audio"]).stem
        assert Path(row["audio"]).parent.parent.name == row["voice"]  # <cache>/<voice>/s175_p50/<word>.wav
        wave, rate = sf.read(row["audio"])
        assert rate == 22050 and 0.15 < len(wave) / rate < 2.0 and np.abs(wave).max() > 0.05  # a spoken word
    # "stop" is longer than "no" in every voice (a plosive cluster and a vowel against one syllable)
    lengths = {(r["voice"], r["text"]): sf.info(r["audio"]).frames for r in train.rows}
    assert all(lengths[(v, "stop")] > lengths[(v, "no")] * 0.9 for v in ("en-us", "en-gb"))


@needs_espeak
def test_spoken_commands_without_metadata_keeps_audio_and_label_only(tmp_path: Path) -> None:
    rows = load("spoken_commands", metadata=False, **small_commands(tmp_path))
    assert rows.columns == ["audio", "label"] and all(set(r) == {"audio", "label"} for r in rows.rows)
    assert [r["label"] for r in rows.rows] == list(range(10)) * 2


def test_spoken_commands_refuses_shared_voices() -> None:
    with pytest.raises(ValueError, match="held out"):
        SOURCES.get("spoken_commands").options.model_validate({"voices": ["en-us"], "test_voices": ["en-us"]})


@needs_espeak
def test_init_spoken_commands_writes_an_audio_recipe_that_validates(tmp_path: Path) -> None:
    options = {**small_commands(tmp_path / "cache"), "metadata": False}
    out = init_source("spoken_commands", options, tmp_path / "commands.yaml")
    plan = compile_recipe(out, weights=False)
    assert list(plan.recipe.modalities) == ["audio"]  # no text column: the word would be the label
    tree = yaml.safe_load(out.read_text())
    assert tree["data"]["test"]["split"] == "test" and tree["data"]["train"]["split"] == "train"
    assert [e["name"] for e in tree["evaluations"]] == ["knn", "linear_probe"]
    assert [o["name"] for o in tree["objectives"]] == ["simclr", "mae"]  # docs/defaults.md#audio


def test_init_gives_audio_half_the_epochs_of_the_other_modalities() -> None:
    """3600 rows: 25 epochs of 256 = 351 steps for audio (SimCLR + MAE; 1 s clips, under the time cap); 32 px
    images (the ResNet) get batch 128 and 50 epochs (1406 steps) capped at 1000 (docs/defaults.md#images)."""
    steps = {}
    for kind, sizes in (("audio", {"path": True, "seconds": 1.0}), ("image", {"side": 32, "channels": 1})):
        profile = Profile(3600, [Column("x", kind, sizes), Column("label", "label")], ["a", "b"], {"train": 3600})
        tree = yaml.safe_load(recipe_text("r", profile, {"train": "{source: manifest, path: x.csv}"}, "x.csv"))
        steps[kind] = (tree["train"]["steps"], tree["train"]["batch_size"])
    assert steps == {"audio": (351, 256), "image": (1000, 128)}


def test_init_sizes_text_only_steps_for_the_batch_it_writes() -> None:
    """Text alone from scratch: batches of at most 64 and 50 epochs of that batch, clamped to [100, 300] steps. 200
    texts get batch 32, so 50 epochs are 312 steps (capped at 300), not the 156 that batches of 64 would give."""

    def budget(rows: int) -> tuple[int, int]:
        profile = Profile(rows, [Column("text", "text", {}), Column("label", "label")], ["a", "b"], {"train": rows})
        data = {"train": "{source: manifest, path: x.csv}"}
        tree = yaml.safe_load(recipe_text("r", profile, data, "x.csv", encoders={"text": "none"}))
        return tree["train"]["steps"], tree["train"]["batch_size"]

    assert budget(200) == (300, 32)
    assert budget(80) == (250, 16)  # 50 * 80 / 16
    assert budget(40) == (250, 8)  # batch floor 8: 50 * 40 / 8
    assert budget(10000) == (300, 64)


def test_init_gives_images_the_resnet_encodes_32_px_width_64_and_a_ten_minute_budget() -> None:
    """Images of at most 64 px: 32 px, ResNet width 64, embed_dim 64, 50 epochs of 128 capped at 1000 steps (the
    64 px, width 128, 301 x 256 recipe took about 2 hours on Noto emoji); 100 px keeps the ViT, width 128, at most
    300 steps (VIT_MAX_STEPS; 50 epochs would be 301)."""

    def recipe(side: int, channels: int, rows: int) -> dict:
        columns = [Column("image", "image", {"side": side, "channels": channels}), Column("label", "label")]
        profile = Profile(rows, columns, ["a", "b"], {"train": rows})
        return yaml.safe_load(recipe_text("r", profile, {"train": "{source: manifest, path: x.csv}"}, "x.csv"))

    for side, channels, rows, size, patch, budget in (
        (64, 3, 1543, 32, 4, (602, 128)),  # Noto emoji
        (28, 1, 60000, 28, 4, (1000, 128)),  # Fashion-MNIST: 50 epochs would be 23437 steps
        (70, 3, 2000, 32, 4, (781, 128)),  # 70 px would be 64 (patch 16 divides it), the ResNet's: 32
    ):
        tree = recipe(side, channels, rows)
        options = tree["modalities"]["image"]["options"]
        assert (options["image_size"], options["patch_size"], options["width"]) == (size, patch, 64), side
        assert options["pool_levels"] == [1, 2], side  # kNN +2 to +3 points on three image sets (defaults.md)
        assert (tree["train"]["steps"], tree["train"]["batch_size"]) == budget, side
        assert tree["model"]["embed_dim"] == 64
    big = recipe(100, 3, 1543)  # 96 px: the ViT, as before
    options = big["modalities"]["image"]["options"]
    assert (options["image_size"], options["width"]) == (96, 128)
    assert "pool_levels" not in options  # the ViT pools with its class token
    assert (big["train"]["steps"], big["train"]["batch_size"], big["model"]["embed_dim"]) == (300, 256, 128)


# ----------------------------------------------------------------------------------------------- noto emoji


@needs_noto
def test_noto_emoji_rows_carry_their_category_and_the_twemoji_split() -> None:
    folder = installed(GOOGLE.package)
    assert folder is not None
    entries = {e["unified"]: e for e in json.loads((folder / "emoji.json").read_text())}
    train, test = load("noto_emoji", split="train"), load("noto_emoji", split="test")
    assert train.class_names == CATEGORIES and len(train.rows) > 1000 and len(test.rows) > 200
    train_codes, test_codes = {r["unified"] for r in train.rows}, {r["unified"] for r in test.rows}
    assert not train_codes & test_codes
    assert train_codes | test_codes == {u for u, e in entries.items() if e.get("has_img_google")}
    for row in train.rows[::50] + test.rows[::50]:
        assert CATEGORIES[row["label"]] == entries[row["unified"]]["category"] == row["category"]
        assert "/img/google/64/" in str(row["image"])
    image = decode_image(by_name(train, test, "grinning face")["image"])
    assert tuple(image.shape) == (3, 64, 64)  # RGBA composited on white
    if installed(TWITTER.package) is not None:  # the same emoji in the same split in both vendors' artwork
        twitter_test = {r["unified"] for r in load("twemoji", split="test").rows}
        assert test_codes & twitter_test == test_codes & {r["unified"] for r in load("twemoji", split="all").rows}


def by_name(train: Source, test: Source, name: str) -> dict:
    found = [r for r in train.rows + test.rows if r["text"] == name]
    assert len(found) == 1, name
    return found[0]


@needs_noto
def test_noto_emoji_without_captions_or_metadata() -> None:
    rows = load("noto_emoji", split="test", caption="none", metadata=False)
    assert rows.columns == ["image", "label"] and all(set(r) == {"image", "label"} for r in rows.rows)
    captioned = load("noto_emoji", split="test")
    assert [r["label"] for r in rows.rows] == [r["label"] for r in captioned.rows]


@needs_noto
def test_init_noto_emoji_writes_an_image_recipe_that_validates(tmp_path: Path) -> None:
    out = init_source("noto_emoji", {"caption": "none", "metadata": False}, tmp_path / "noto.yaml")
    plan = compile_recipe(out, weights=False)
    assert list(plan.recipe.modalities) == ["image"]
    tree = yaml.safe_load(out.read_text())
    assert tree["modalities"]["image"]["options"]["channels"] == 3
    options = tree["modalities"]["image"]["options"]
    assert (options["image_size"], options["width"]) == (32, 64)  # 64 px artwork read at 32 (docs/defaults.md)
    assert (tree["train"]["steps"], tree["train"]["batch_size"]) == (602, 128)  # about 6 minutes on one thread
    # 64 px: the ResNet, read pooled and as its feature map
    assert [(e["name"], e.get("features", "pooled")) for e in tree["evaluations"]] == [
        ("knn", "pooled"),
        ("linear_probe", "pooled"),
        ("knn", "tokens"),
        ("linear_probe", "tokens"),
    ]
    assert "10 classes" in out.read_text()
