"""Data for binding modalities: the ``concat`` source and the ``sklearn_digits`` / ``spoken_digits`` sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmssl.build import load_source
from mmssl.compiler import compile_recipe
from mmssl.data.sources import SOURCES, Source, SourceOptions, register_source
from mmssl.datasets.digits import DIGIT_WORDS
from mmssl.recipe import RecipeError

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "recipes" / "tiny_image_text.yaml"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


class RowsOptions(SourceOptions):
    which: str


@register_source("test_rows", RowsOptions)
def load_rows(options: RowsOptions, base: Path) -> Source:
    if options.which == "image":
        return Source([{"image": 1, "text": "a one", "label": 1}], ["zero", "one"], "img", ["image", "text", "label"])
    if options.which == "audio":
        return Source(
            [{"audio": "1.wav", "text": "one", "label": 1}], ["zero", "one"], "aud", ["audio", "text", "label"]
        )
    return Source([{"audio": "x.wav", "label": 0}], ["cat"], "other", ["audio", "label"])


def load(spec: dict) -> Source:
    kind = SOURCES.get(spec["source"])
    return kind.load(kind.options.model_validate({k: v for k, v in spec.items() if k != "source"}), REPO)


def test_concat_keeps_each_rows_columns_and_agreeing_class_names() -> None:
    joined = load(
        {
            "source": "concat",
            "parts": [{"source": "test_rows", "which": "image"}, {"source": "test_rows", "which": "audio"}],
        }
    )
    assert joined.rows == [{"image": 1, "text": "a one", "label": 1}, {"audio": "1.wav", "text": "one", "label": 1}]
    assert joined.columns == ["image", "text", "label", "audio"]
    assert joined.class_names == ["zero", "one"]
    assert "img" in joined.origin and "aud" in joined.origin
    mixed = load(
        {
            "source": "concat",
            "parts": [{"source": "test_rows", "which": "image"}, {"source": "test_rows", "which": "other"}],
            "limit": 1,
        }
    )
    assert mixed.class_names is None and len(mixed) == 1


def test_concat_parts_are_validated_with_key_paths() -> None:
    tree = yaml.safe_load(TINY.read_text())
    tree["data"]["train"] = {
        "source": "concat",
        "parts": [
            {"source": "fashion_mnist", "limit": 8},
            {"source": "fashion_mnist", "split": "val", "colour": True},
            {"limit": 3},
            {"source": "no_such_source"},
        ],
    }
    with pytest.raises(RecipeError) as err:
        compile_recipe(tree)
    paths = [path for path, _ in err.value.errors]
    assert paths == [
        "data.train.parts[1].split",
        "data.train.parts[1].colour",
        "data.train.parts[2]",
        "data.train.parts[3].source",
    ], err.value.errors
    assert "unknown data source 'no_such_source'" in str(err.value)

    tree["data"]["train"]["parts"] = [{"source": "fashion_mnist", "limit": 8}, {"source": "sklearn_digits", "limit": 4}]
    source = load_source(compile_recipe(tree), "train")
    assert len(source) == 12 and source.class_names is None  # the parts' classes differ
    assert {"caption", "text", "image"} <= set(source.columns)


def test_sklearn_digits_splits_images_and_captions() -> None:
    train, test = load({"source": "sklearn_digits"}), load({"source": "sklearn_digits", "split": "test"})
    everything = load({"source": "sklearn_digits", "split": "all", "upsample": 2, "text_column": "caption"})
    assert len(train) + len(test) == len(everything) == 1797
    assert 0.15 < len(test) / 1797 < 0.25
    assert train.class_names == DIGIT_WORDS
    row = train.rows[0]
    assert row["image"].dtype == np.uint8 and row["image"].shape == (8, 8) and row["image"].max() > 200
    assert DIGIT_WORDS[row["label"]] in row["text"]
    big = everything.rows[0]
    assert big["image"].shape == (16, 16) and np.array_equal(big["image"][::2, ::2], row["image"])
    assert set(big) == {"image", "caption", "label"}
    assert [r["text"] for r in load({"source": "sklearn_digits", "split": "test"}).rows] == [
        r["text"] for r in test.rows
    ]


@needs_espeak
def test_spoken_digits_synthesises_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path))
    spec = {
        "source": "spoken_digits",
        "voices": ["en-us"],
        "test_voices": ["en-gb"],
        "variants": ["", "f2"],
        "speeds": [160],
        "pitches": [40],
    }
    train = load(spec)
    assert len(train) == 20 and train.class_names == DIGIT_WORDS
    assert [r["text"] for r in train.rows[:10]] == DIGIT_WORDS and [r["label"] for r in train.rows[:10]] == list(
        range(10)
    )
    assert {r["voice"] for r in train.rows} == {"en-us", "en-us+f2"}
    first = train.rows[7]["audio"]
    assert first.is_relative_to(tmp_path / "spoken-digits") and first.name == "seven.wav"
    audio, rate = sf.read(first)
    assert rate == 22050 and 0.3 < len(audio) / rate < 2.0
    stamp = first.stat().st_mtime_ns
    assert load(spec).rows[7]["audio"].stat().st_mtime_ns == stamp  # cached: not synthesised again

    test = load({**spec, "split": "test", "test_variants": ["m3"]})
    assert len(test) == 10 and {r["voice"] for r in test.rows} == {"en-gb+m3"}
    if Path("/usr/share/asterisk/sounds/en/digits/0.wav").is_file():
        real = load({**spec, "split": "test", "asterisk_digits": True})
        assert len(real) == 30 and [r["label"] for r in real.rows[-10:]] == list(range(10))

    with pytest.raises(ValueError, match="held out"):
        load({**spec, "test_voices": ["en-us"]})
    with pytest.raises(ValueError, match="no voice variant 'nope'"):
        load({**spec, "variants": ["nope"]})

    # `limit` keeps the first rows; a split left with no voices is refused, for digits and commands alike.
    assert [r["text"] for r in load({**spec, "limit": 3}).rows] == DIGIT_WORDS[:3]
    with pytest.raises(ValueError, match="spoken_digits split test: no voices given"):
        load({**spec, "split": "test", "test_voices": [], "asterisk_digits": False})
    commands = {**spec, "source": "spoken_commands"}
    with pytest.raises(ValueError, match="spoken_commands split test: no voices given"):
        load({**commands, "split": "test", "test_voices": []})


@needs_espeak
def test_binding_recipe_trains_on_rows_without_shared_modalities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped binding recipe, shrunk: image-text and audio-text rows only, micro-batches that lack a
    modality, audio<->image retrieval by label on a split where no row has both."""
    from mmssl.recipe import apply_overrides, load_yaml
    from mmssl.run import evaluate, load_run
    from mmssl.train.trainer import train

    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path / "cache"))
    recipe = REPO / "recipes" / "binding" / "digits_image_audio_text.yaml"
    voices = {"variants": [""], "speeds": [160], "pitches": [40], "asterisk_digits": False}
    tree = apply_overrides(
        load_yaml(recipe),
        [
            "train.steps=3",
            "train.batch_size=5",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.num_workers=0",
            "modalities.image.options.depth=1",
            "modalities.audio.options.depth=1",
            "modalities.text.options.depth=1",
        ],
    )
    tree["data"] = {
        "train": {
            "source": "concat",
            "parts": [
                {"source": "sklearn_digits", "split": "train", "limit": 1},
                {"source": "spoken_digits", "split": "train", "voices": ["en-us"], "test_voices": [], **voices},
            ],
        },
        "test": {
            "source": "concat",
            "parts": [
                {"source": "sklearn_digits", "split": "test", "limit": 20},
                {"source": "spoken_digits", "split": "test", "voices": ["en-us"], "test_voices": ["en-gb"], **voices},
            ],
        },
    }
    tree["evaluations"] = [tree["evaluations"][0]]
    plan = compile_recipe(tree, source=str(recipe), base_dir=recipe.parent)
    assert [o.modalities for _, _, o in plan.objectives] == [("image", "text"), ("audio", "text")]
    result = train(plan, tmp_path / "run")
    assert result.finished
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    pairs = [(r["clip/pairs"], r["clip2/pairs"]) for r in records]
    assert all(a + b == 5 for a, b in pairs), pairs  # every row is in exactly one pair
    assert any(a == 0 for a, _ in pairs), pairs  # one image row among 11: some micro-batch has none
    results = evaluate(load_run(tmp_path / "run")).results
    assert results["audio_image_audio2image_queries"] == 10 and results["audio_image_image2audio_queries"] == 20
    for key in ("audio2image_r@1", "image2audio_r@5", "audio2image_r@1_random_init", "audio2image_chance_r@1"):
        assert 0.0 <= results[f"audio_image_{key}"] <= 1.0
