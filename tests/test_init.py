"""``mmssl init``: a manifest of each modality (and a folder of class subfolders) gives a recipe that validates,
with the modality, sizes, classes and split the data has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmssl import init as init_module
from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.data.sources import SOURCES
from mmssl.init import init_folder, init_manifest

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "O=C=O", "CCCC", "c1ccncc1", "CC(C)O"]


def write_rows(file: Path, rows: list[dict]) -> Path:
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file


def image_manifest(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append({"file": f"{i}.png", "label": ["cat", "dog"][i % 2], "split": "test" if i < 4 else "train"})
    return write_rows(folder / "images.jsonl", rows)


def audio_manifest(folder: Path) -> Path:
    rows = []
    for i in range(8):
        sf.write(folder / f"{i}.wav", np.sin(np.arange(1600) * (i + 1) / 20).astype(np.float32), 8000)
        rows.append({"clip": f"{i}.wav", "label": i % 2, "split": "test" if i < 2 else "train"})
    return write_rows(folder / "audio.jsonl", rows)


def series_manifest(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = [
        {"values": rng.normal(size=(3, 50)).tolist(), "label": ["walk", "run"][i % 2], "split": "train"}
        for i in range(10)
    ]
    rows += [{"values": rng.normal(size=(3, 50)).tolist(), "label": "walk", "split": "test"} for _ in range(3)]
    return write_rows(folder / "series.jsonl", rows)


def text_manifest(folder: Path) -> Path:
    words = ["the cat sat on the mat", "a dog ran in the park today", "stocks fell sharply in early trading"]
    rows = [{"text": f"{words[i % 3]} number {i}", "label": ["pets", "pets", "news"][i % 3]} for i in range(12)]
    return write_rows(folder / "text.jsonl", rows)


def smiles_manifest(folder: Path) -> Path:
    rows = [{"smiles": s, "label": i % 2, "split": "test" if i < 2 else "train"} for i, s in enumerate(SMILES)]
    return write_rows(folder / "molecules.jsonl", rows)


CASES = {
    "image": (image_manifest, "image", {"image_size": 20, "channels": 1}),
    "audio": (audio_manifest, "audio", {}),
    "timeseries": (series_manifest, "timeseries", {"channels": 3, "max_length": 50, "pool": "channels"}),
    "text": (text_manifest, "text", {}),
    "graph": (smiles_manifest, "graph", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_init_manifest_of_each_modality_validates(case: str, tmp_path: Path) -> None:
    make, modality, options = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    out = init_manifest(make(data), tmp_path / "recipe" / "starter.yaml")
    plan = compile_recipe(out, weights=False)  # schema, plugins, objectives, evaluations and their data
    assert list(plan.recipe.modalities) == [modality]
    tree = yaml.safe_load(out.read_text())
    for key, value in options.items():
        assert tree["modalities"][modality]["options"][key] == value
    assert set(tree["data"]) == {"train", "test"}  # the text manifest has no split column: a held-out share
    assert tree["data"]["test"].get("holdout") == (init_module.TEST_SHARE if case == "text" else None)
    names = [e["name"] for e in tree.get("evaluations", [])]
    twice = 2 if modality == "image" else 1  # small images: pooled and feature-map read-outs
    assert names == ["knn", "linear_probe"] * twice
    assert "# " in out.read_text()  # every choice is commented
    # a text recipe names the other route (a released encoder, or text=none for from scratch)
    assert ("--encoder text=" in out.read_text()) == (modality == "text")


def test_init_splits_by_the_split_column(tmp_path: Path) -> None:
    out = init_manifest(image_manifest(tmp_path), tmp_path / "starter.yaml")
    tree = yaml.safe_load(out.read_text())
    kind = SOURCES.get("manifest")
    for split, count in (("train", 8), ("test", 4)):
        entry = tree["data"][split]
        assert entry["split_column"] == "split" and entry["split"] == split
        assert entry["class_names"] == ["cat", "dog"]
        rows = kind.load(kind.options.model_validate({k: v for k, v in entry.items() if k != "source"}), tmp_path)
        assert len(rows.rows) == count and all(r["split"] == split for r in rows.rows)


def test_init_paired_modalities_get_clip_and_distinct_metric_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(init_module, "installed", lambda package: True)  # the released text default is text-only
    rows = [json.loads(line) for line in image_manifest(tmp_path).read_text().splitlines()]
    for i, row in enumerate(rows):
        row["caption"] = f"a small grey picture number {i} of something"
    out = init_manifest(write_rows(tmp_path / "pairs.jsonl", rows), tmp_path / "pairs.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    assert set(tree["modalities"]) == {"image", "text"}
    assert "encoder" not in tree["modalities"]["text"]  # both trained from scratch, aligned with CLIP
    assert {"name": "clip", "modalities": ["image", "text"], "weight": 1.0} in tree["objectives"]
    prefixes = [e["prefix"] for e in tree["evaluations"]]
    assert sorted(prefixes) == sorted(
        ["knn_image", "probe_image", "knn_image_tokens", "probe_image_tokens", "knn_text", "probe_text"]
    )


def test_init_folder_of_classes(tmp_path: Path) -> None:
    for label in ("circle", "square"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((40, 40, 3), 30 * i, dtype=np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    out = init_folder(tmp_path / "imgs", tmp_path / "r.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    assert tree["modalities"]["image"]["options"]["channels"] == 3
    assert tree["modalities"]["image"]["options"]["image_size"] == 32  # 40 px: the ResNet's, capped at 32
    train = Path(tree["data"]["train"]["path"]).read_text().splitlines()
    test = Path(tree["data"]["test"]["path"]).read_text().splitlines()
    assert len(train) - 1 == 8 and len(test) - 1 == 2  # one of five per class held out, plus the header


def test_init_cli_refuses_to_overwrite_and_names_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "r.yaml"
    target.write_text("x: 1\n")
    result = runner.invoke(app, ["init", str(text_manifest(tmp_path)), "--output", str(target)])
    assert result.exit_code == 2 and "--force" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["init", str(empty), "--output", str(tmp_path / "n.yaml")])
    assert result.exit_code == 2 and "no rows" in result.output
    (tmp_path / "sub").mkdir()
    wrong_base = write_rows(tmp_path / "sub" / "m.jsonl", [{"image": "imgs/0.png", "label": i % 2} for i in range(4)])
    result = runner.invoke(app, ["init", str(wrong_base), "--output", str(tmp_path / "w.yaml")])
    assert result.exit_code == 2 and "column 'image': file" in result.output
    assert "relative paths are read from the manifest's folder" in result.output and "Traceback" not in result.output


def test_init_reads_small_images_two_ways(tmp_path: Path) -> None:
    """Images the ResNet encodes get a kNN and a probe on its feature map (tokens) beside the pooled ones."""
    from mmssl.init import RESNET_LR
    from mmssl.init import RESNET_MAX_SIZE as INIT_RESNET_MAX_SIZE
    from mmssl_image.options import RESNET_MAX_SIZE

    assert INIT_RESNET_MAX_SIZE == RESNET_MAX_SIZE  # init decides as the plugin's `encoder: auto` does
    out = init_manifest(image_manifest(tmp_path), tmp_path / "small.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    read_outs = {(e["name"], e.get("features", "pooled")) for e in tree["evaluations"]}
    assert read_outs == {("knn", "pooled"), ("linear_probe", "pooled"), ("knn", "tokens"), ("linear_probe", "tokens")}
    assert tree["train"]["lr"] == float(RESNET_LR)  # the ResNet's rate, not the transformers' 1e-3
    for side, expected in ((64, 4), (100, 2)):  # 100 px: image_size 96, above RESNET_MAX_SIZE: the ViT, pooled
        rows = [{"image": str(_png(tmp_path / f"big{side}_{i}.png", side)), "label": i % 2,
                 "split": "test" if i < 4 else "train"} for i in range(12)]
        out = init_manifest(write_rows(tmp_path / f"big{side}.jsonl", rows), tmp_path / f"big{side}.yaml")
        compile_recipe(out, weights=False)  # the ViT's heads divide its width
        tree = yaml.safe_load(out.read_text())
        assert len(tree["evaluations"]) == expected
        assert tree["train"]["lr"] == (float(RESNET_LR) if side <= RESNET_MAX_SIZE else 1.0e-3)


def test_init_caps_the_vit_size_and_budget_on_a_cpu(tmp_path: Path) -> None:
    """Large images get the ViT at VIT_INIT_SIZE, not their own side, and at most VIT_MAX_STEPS steps (50 epochs
    of these 56 training rows at batch 8 would be 350)."""
    from mmssl.init import VIT_INIT_SIZE, VIT_MAX_STEPS

    rows = [{"image": str(_png(tmp_path / f"{i}.png", 300)), "label": i % 2, "split": "test" if i < 4 else "train"}
            for i in range(60)]
    out = init_manifest(write_rows(tmp_path / "photos.jsonl", rows), tmp_path / "photos.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    options = tree["modalities"]["image"]["options"]
    assert (options["image_size"], options["patch_size"], options["encoder"]) == (VIT_INIT_SIZE, 16, "auto")
    assert (tree["train"]["batch_size"], tree["train"]["steps"]) == (8, VIT_MAX_STEPS)
    assert f"at most {VIT_MAX_STEPS} for a ViT" in out.read_text()


def _png(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side), 90, dtype=np.uint8)).save(path)
    return path


def test_init_skips_identifier_columns(tmp_path: Path) -> None:
    """A column of single words, too many to be classes (message numbers, hashes), is not a text modality."""
    rows = [
        {"id": f"{i % 9:05d}", "hash": f"{i * 7919:x}", "text": f"a short message about topic {i % 3}", "label": i % 2}
        for i in range(12)
    ]
    out = init_manifest(write_rows(tmp_path / "ids.jsonl", rows), tmp_path / "ids.yaml")
    compile_recipe(out, weights=False)
    assert list(yaml.safe_load(out.read_text())["modalities"]) == ["text"]


def test_init_reads_inline_arrays_as_series_or_images_by_their_values(tmp_path: Path) -> None:
    """Inline [6, 10] arrays of signed floats are a 6-channel series (no image decodes them); inline 8 x 8 arrays
    of 0..255 integers are images. Neither is a path column, and both validate."""
    rng = np.random.default_rng(2)
    split = ["test" if i < 4 else "train" for i in range(12)]
    series = [{"values": rng.normal(size=(6, 10)).tolist(), "label": i % 2, "split": split[i]} for i in range(12)]
    pixels = [{"pixels": rng.integers(0, 256, (8, 8)).tolist(), "label": i % 2, "split": split[i]} for i in range(12)]
    for name, rows, modality in (("series", series, "timeseries"), ("pixels", pixels, "image")):
        out = init_manifest(write_rows(tmp_path / f"{name}.jsonl", rows), tmp_path / f"{name}.yaml")
        compile_recipe(out, weights=False)  # the manifest loader would fail on a list marked as a path
        tree = yaml.safe_load(out.read_text())
        assert list(tree["modalities"]) == [modality]
        assert "path_columns" not in tree["data"]["train"]
    series_options = yaml.safe_load((tmp_path / "series.yaml").read_text())["modalities"]["timeseries"]["options"]
    assert series_options["channels"] == 6 and series_options["pool"] == "channels"  # one mean per channel
    single = [{"values": rng.normal(size=40).tolist(), "label": i % 2, "split": split[i]} for i in range(12)]
    out = init_manifest(write_rows(tmp_path / "single.jsonl", single), tmp_path / "single.yaml")
    assert yaml.safe_load(out.read_text())["modalities"]["timeseries"]["options"]["pool"] == "mean"  # one channel


def test_init_bounds_the_tokens_and_training_time_of_long_wide_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 channels x 600 steps would be 40 x 38 tokens at the usual patch of 16: the patch grows to 50 steps (12
    per channel, 480 tokens), the pooled embedding is the mean (40 x width would be too wide), and the steps come
    from the time budget: seconds / (batch x (tokens x seconds per token + values x seconds per value))."""
    rng = np.random.default_rng(3)
    rows = [{"values": rng.normal(size=(40, 600)).round(2).tolist(), "label": i % 2,
             "split": "test" if i < 4 else "train"} for i in range(20)]
    manifest = write_rows(tmp_path / "eeg.jsonl", rows)
    out = init_manifest(manifest, tmp_path / "eeg.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    options = tree["modalities"]["timeseries"]["options"]
    assert (options["patch_len"], options["pool"]) == (50, "mean")
    assert init_module.SERIES_MAX_TOKENS >= 40 * 12
    assert tree["train"]["steps"] == 200 and "capped" not in out.read_text()  # 200: the floor of a small set
    batch = tree["train"]["batch_size"]
    row_seconds = 480 * init_module.SERIES_TOKEN_SECONDS + 40 * 600 * init_module.SERIES_VALUE_SECONDS
    monkeypatch.setattr(init_module, "MAX_TRAIN_SECONDS", 120.5 * batch * row_seconds)
    out = init_manifest(manifest, tmp_path / "eeg_capped.yaml")
    assert yaml.safe_load(out.read_text())["train"]["steps"] == 120
    assert "capped at about" in out.read_text()


def test_init_caps_audio_training_time_from_the_clips_lengths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clips' length (0.2 s here, read from their headers) enters the time budget."""
    manifest = audio_manifest(tmp_path)
    steps = yaml.safe_load(init_manifest(manifest, tmp_path / "a.yaml").read_text())["train"]
    row_seconds = init_module.AUDIO_CLIP_SECONDS + 0.2 * init_module.AUDIO_SECOND_SECONDS
    monkeypatch.setattr(init_module, "MAX_TRAIN_SECONDS", 80.5 * steps["batch_size"] * row_seconds)
    out = init_manifest(manifest, tmp_path / "capped.yaml")
    assert steps["steps"] > 80 and yaml.safe_load(out.read_text())["train"]["steps"] == 80
    compile_recipe(out, weights=False)


@pytest.mark.parametrize(
    ("kind", "sizes", "batch", "seconds"),
    [  # the 8- and 12-step runs the cost model was fitted on (two CPU threads, alone; docs/defaults.md)
        ("timeseries", {"channels": 1, "length": 1460}, 256, 1.05),
        ("timeseries", {"channels": 6, "length": 500}, 256, 2.3),
        ("timeseries", {"channels": 40, "length": 600}, 64, 2.0),
        ("audio", {"seconds": 1.0}, 256, 1.3),
        ("audio", {"seconds": 4.0}, 256, 3.0),
        ("image", {"side": 128, "channels": 3}, 256, 2.6),
        ("image", {"side": 28, "channels": 1}, 256, 0.68 * (32 / 28) ** 2),  # measured at 28 px, written at 32
        ("graph", {"atoms": 11.6}, 256, 0.66),  # molecules of FreeSolv and solubility
        ("graph", {"atoms": 35.1}, 256, 1.23),  # three of them joined into one SMILES ("a.b.c")
    ],
)
def test_init_cost_model_reproduces_the_steps_it_was_fitted_on(
    kind: str, sizes: dict, batch: int, seconds: float
) -> None:
    """Within 25 %: a slip in a constant's unit (ms for s) fails here, where a monkeypatched budget would not."""
    estimate = batch * init_module._row_seconds(init_module.Column("x", kind, sizes))
    assert 0.75 * seconds <= estimate <= 1.25 * seconds


def test_init_caps_molecule_training_time_from_their_atoms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The median heavy-atom count of the molecules (RDKit's, hydrogens implicit) enters the time budget."""
    manifest = smiles_manifest(tmp_path)
    recipe = init_manifest(manifest, tmp_path / "m.yaml")
    steps = yaml.safe_load(recipe.read_text())["train"]
    from rdkit import Chem

    atoms = float(np.median([Chem.MolFromSmiles(s).GetNumAtoms() for s in SMILES]))
    row_seconds = init_module.GRAPH_ROW_SECONDS + atoms * init_module.GRAPH_ATOM_SECONDS
    monkeypatch.setattr(init_module, "MAX_TRAIN_SECONDS", 60.5 * steps["batch_size"] * row_seconds)
    out = init_manifest(manifest, tmp_path / "capped.yaml")
    assert steps["steps"] > 60 and yaml.safe_load(out.read_text())["train"]["steps"] == 60
    assert "capped at about" in out.read_text() and "capped" not in recipe.read_text()


def test_a_column_is_smiles_only_when_every_value_is_a_molecule(tmp_path: Path) -> None:
    """One string that only looks like SMILES (an unclosed ring, which RDKit rejects) keeps the column from being
    graphs; the molecules' atom counts come from the same parse."""
    column = init_module.classify("smiles", SMILES, tmp_path)
    assert column is not None and column.kind == "graph"
    assert column.sizes == {"atoms": 4.0}  # the median of 3, 6, 4, 3, 3, 4, 6, 4 heavy atoms
    assert init_module.classify("smiles", [*SMILES, "C1CC"], tmp_path) is None


def test_init_marks_rows_without_a_label_as_unlabelled(tmp_path: Path) -> None:
    """A manifest where some rows have no label (None, "" or no key) gets `missing_labels: unlabelled`, so the
    recipe validates instead of stopping at the first such row; a fully labelled one keeps the default."""
    rows = [{"text": f"words number {i} here", "split": "test" if i < 6 else "train"} for i in range(24)]
    for i, row in enumerate(rows):
        if i % 4:
            row["label"] = [None, "x", "", "y"][i % 4] if i % 5 else "x"
    manifest = write_rows(tmp_path / "partly.jsonl", rows)  # the first row has no label key at all
    out = init_manifest(manifest, tmp_path / "partly.yaml", encoders={"text": "none"})
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    assert tree["data"]["train"]["missing_labels"] == tree["data"]["test"]["missing_labels"] == "unlabelled"
    out = init_manifest(text_manifest(tmp_path), tmp_path / "labelled.yaml", encoders={"text": "none"})
    assert "missing_labels" not in yaml.safe_load(out.read_text())["data"]["train"]


def test_init_folder_leaves_out_files_of_another_kind(tmp_path: Path) -> None:
    """Class folders with a Thumbs.db and a notes file beside the images: the images are the dataset (init used to
    read the mixed file column as text), and the recipe's header says what was left out."""
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(5):
            _png(tmp_path / "photos" / label / f"IMG {i}.PNG", 24)
        (tmp_path / "photos" / label / "Thumbs.db").write_bytes(b"\x00junk")
        (tmp_path / "photos" / label / "notes.txt").write_text("a sunny day")
    out = init_folder(tmp_path / "photos", tmp_path / "photos.yaml")
    compile_recipe(out, weights=False)
    assert list(yaml.safe_load(out.read_text())["modalities"]) == ["image"]
    assert "# Note: left out 4 files that are not image files" in out.read_text()
    assert "Thumbs" not in (tmp_path / "photos.train.csv").read_text() + (tmp_path / "photos.test.csv").read_text()
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("nothing")
    with pytest.raises(init_module.InitError, match=r"no image, audio or series files .*\.txt"):
        init_folder(tmp_path / "empty", tmp_path / "empty.yaml")


def test_init_says_how_it_reads_arrays_with_more_channels_than_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = [{"values": rng.normal(size=(50, 3)).tolist(), "label": i % 2, "split": "test" if i < 4 else "train"}
            for i in range(12)]
    out = init_manifest(write_rows(tmp_path / "time_major.jsonl", rows), tmp_path / "time_major.yaml")
    assert "these have 50 channels of 3 steps; if they are [time, channels], save them transposed" in out.read_text()
    compile_recipe(out, weights=False)


@pytest.mark.parametrize(
    ("values", "continuous"),
    [
        ([1, 2, 3], False),
        (["1", " 2 ", 3.0], False),  # integral numbers and numeric strings are class indices (parse_label)
        ([None, "", 2.5, 1], True),  # missing values are skipped
        (["0.5", "1"], True),
        (["cat", 1.5], False),  # a name: classes, whose 1.5 the label parser reports
        ([None, ""], False),
    ],
)
def test_a_label_column_is_a_regression_target_when_some_number_is_no_class_index(
    values: list[object], continuous: bool
) -> None:
    assert init_module._continuous(values) is continuous


def test_init_reads_a_column_of_non_integer_numbers_as_a_regression_target(tmp_path: Path) -> None:
    """A `y` column of real numbers is not 50 one-row classes (whose recipe failed validation): the recipe has no
    label and no evaluations, and says why; integral numbers (`1.0`, `2.0`) stay classes."""
    rng = np.random.default_rng(5)
    split = ["test" if i < 8 else "train" for i in range(40)]
    rows = [{"smiles": SMILES[i % 8], "y": float(rng.normal()), "split": split[i]} for i in range(40)]
    out = init_manifest(write_rows(tmp_path / "reg.jsonl", rows), tmp_path / "reg.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    assert "label_column" not in tree["data"]["train"] and "evaluations" not in tree
    assert "column y holds non-integer numbers, a regression target" in out.read_text()
    for row in rows:
        row["y"] = float(round(abs(row["y"])))
    out = init_manifest(write_rows(tmp_path / "cls.jsonl", rows), tmp_path / "cls.yaml")
    assert yaml.safe_load(out.read_text())["data"]["train"]["label_column"] == "y"


def test_init_reads_a_parquet_of_inline_series(tmp_path: Path) -> None:
    """pandas gives a parquet's list cells as numpy arrays: a missing-value check must not compare them to ""."""
    import pandas as pd

    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"values": [rng.normal(size=30) for _ in range(12)], "label": [i % 2 for i in range(12)],
                          "split": ["test" if i < 4 else "train" for i in range(12)]})
    frame.to_parquet(tmp_path / "series.parquet")
    out = init_manifest(tmp_path / "series.parquet", tmp_path / "series.yaml")
    compile_recipe(out, weights=False)
    assert yaml.safe_load(out.read_text())["modalities"]["timeseries"]["options"]["max_length"] == 30
