"""`mmssl finetune`: probe and full fine-tuning on tiny labelled manifests, outputs, metrics and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.finetune import FinetuneConfig, FinetuneError, finetune, fit_probe, regression_metrics
from mmssl.recipe import load_yaml
from mmssl.run import load_run
from mmssl.train.trainer import train as train_run

RECIPE = """\
name: tiny_finetune
seed: 1
data:
  train: {source: manifest, path: train.csv, path_columns: [image]}
modalities:
  image:
    options: {image_size: 8, patch_size: 4, channels: 1, width: 16, depth: 1, heads: 2, pool: mean,
              stats_samples: 64, crop_scale: [0.6, 1.0], encoder: vit}
  text:
    column: caption
    options: {vocab_size: 48, max_length: 8, width: 16, depth: 1, heads: 2, pool: mean}
model: {embed_dim: 8}
objectives:
  - {name: simclr, modality: image, proj_dim: 8, hidden_dim: 16}
train: {steps: 2, batch_size: 8, lr: 1.0e-3, log_every: 1}
"""

WORDS = {"a": ["cat", "dog", "pet", "fur", "paw"], "b": ["car", "road", "tyre", "engine", "wheel"]}


def _image(rng: np.random.Generator, horizontal: bool, level: float) -> np.ndarray:
    """An 8x8 grey image of stripes (horizontal or vertical) whose bright rows/columns are at ``level``."""
    pixels = rng.uniform(0.0, 0.1, size=(8, 8))
    if horizontal:
        pixels[::2] += level
    else:
        pixels[:, ::2] += level
    return (pixels.clip(0, 1) * 255).astype(np.uint8)


def write_manifest(folder: Path, name: str, rows: int, seed: int, fmt: str = "csv") -> Path:
    """Images of two classes (horizontal stripes: "a", vertical: "b"), two-topic captions and a numeric target."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        top = bool(i % 2)
        level = float(rng.uniform(0.3, 0.85))
        file = f"img/{name}_{i}.png"
        Image.fromarray(_image(rng, top, level), mode="L").save(folder / file)
        cls = "a" if top else "b"
        caption = " ".join(rng.choice(WORDS[cls], size=3))
        records.append({"image": file, "caption": caption, "cls": cls, "number": int(top), "target": 4.0 * level - 1.0})
    path = folder / f"{name}.{fmt}"
    if fmt == "csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finetune")
    write_manifest(folder, "train", 80, 0)
    write_manifest(folder, "test", 40, 1, fmt="jsonl")
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder


def config(data: Path, out: str, **kwargs: object) -> FinetuneConfig:
    base = {
        "encoder": data / "recipe.yaml",
        "modality": "image",
        "train": data / "train.csv",
        "test": data / "test.jsonl",
        "output": data / out,
        "label": "cls",
        "epochs": 30,
    }
    return FinetuneConfig(**(base | kwargs))  # type: ignore[arg-type]


def quiet(_: str) -> None:
    pass


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# Probe.


def test_probe_classification_beats_chance_and_writes_outputs(data: Path) -> None:
    result = finetune(config(data, "probe_cls"), log=quiet)
    out = data / "probe_cls"
    metrics = read_json(out / "eval.json")
    assert metrics == pytest.approx(result.metrics)
    assert metrics["num_classes"] == 2 and metrics["chance"] == pytest.approx(0.5)
    assert metrics["finetune_top1"] >= metrics["chance"] + 0.3
    assert metrics["finetune_macro_f1"] >= 0.7
    assert 0.0 <= metrics["finetune_val_top1"] <= 1.0
    assert read_json(out / "labels.json") == {"column": "cls", "classes": ["a", "b"]}
    head = load_file(str(out / "head.safetensors"))
    assert head["linear.weight"].shape == (2, 16) and "feature_mean" in head
    assert not (out / "encoder.safetensors").exists()
    settings = read_json(out / "finetune.json")
    assert settings["rows"] == {"train": 72, "val": 8, "test": 40}  # stratified 10% of 80
    assert settings["column_kind"] == "file" and settings["encoder_kind"] == "recipe"
    predictions = list(csv.DictReader((out / "predictions.csv").open()))
    accuracy = np.mean([p["label"] == p["prediction"] for p in predictions])
    assert accuracy == pytest.approx(metrics["finetune_top1"])
    assert (out / "processors" / "image" / "image.json").is_file()


@pytest.mark.parametrize(
    "kwargs", [{}, {"mode": "full", "task": "regression", "label": "target", "augment": True, "epochs": 2}]
)
def test_same_seed_same_results(data: Path, kwargs: dict) -> None:
    name = kwargs.get("mode", "probe")
    finetune(config(data, f"{name}_det1", **({"epochs": 5, "seed": 3} | kwargs)), log=quiet)
    finetune(config(data, f"{name}_det2", **({"epochs": 5, "seed": 3} | kwargs)), log=quiet)
    first, second = data / f"{name}_det1", data / f"{name}_det2"
    assert (first / "eval.json").read_text() == (second / "eval.json").read_text()
    for file in ["head.safetensors"] + (["encoder.safetensors"] if kwargs else []):
        one, two = load_file(str(first / file)), load_file(str(second / file))
        assert all(torch.equal(one[k], two[k]) for k in one)


def test_integer_labels_and_text_values(data: Path) -> None:
    """The text modality reads its caption column as values; integer labels keep their numeric classes."""
    result = finetune(config(data, "text", modality="text", label="number", epochs=40), log=quiet)
    print(f"text probe top-1 {result.metrics['finetune_top1']:.3f}")
    assert read_json(data / "text" / "labels.json")["classes"] == [0, 1]
    assert read_json(data / "text" / "finetune.json")["column_kind"] == "value"
    assert result.metrics["finetune_top1"] >= result.metrics["chance"] + 0.3


def test_probe_regression_matches_least_squares(data: Path) -> None:
    result = finetune(
        config(
            data,
            "reg",
            task="regression",
            label="target",
            epochs=300,
            val_fraction=0.0,
            save_features=True,
            batch_size=512,
        ),
        log=quiet,
    )
    out = data / "reg"
    metrics = read_json(out / "eval.json")
    assert metrics["finetune_r2"] > 0.3
    assert metrics["finetune_rmse"] < metrics["baseline_rmse"]
    # r2 recomputed independently from the saved predictions and the test manifest.
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    y = np.array([r["target"] for r in rows])
    pred = np.array([float(p["prediction"]) for p in csv.DictReader((out / "predictions.csv").open())])
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert metrics["finetune_r2"] == pytest.approx(r2, abs=1e-6)
    assert metrics["finetune_mae"] == pytest.approx(np.abs(y - pred).mean(), abs=1e-6)
    # The closed-form least-squares fit on the same standardised features: the probe gets (nearly) there.
    feats = load_file(str(out / "features.safetensors"))
    x, t = feats["train"].double(), feats["train_labels"].double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)

    def design(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([(z.double() - mean) / std, torch.ones(len(z), 1, dtype=torch.float64)], 1)

    solution = torch.linalg.lstsq(design(x), t[:, None]).solution
    lstsq_train_mse = float(((design(x) @ solution)[:, 0] - t).pow(2).mean())
    with torch.no_grad():
        probe_train_mse = float((result.head.predict(feats["train"]).double() - t).pow(2).mean())
    assert lstsq_train_mse <= probe_train_mse + 1e-6
    assert probe_train_mse <= 1.1 * lstsq_train_mse + 1e-3
    lstsq_test = (design(feats["test"]) @ solution)[:, 0]
    closed = regression_metrics(feats["test_labels"], lstsq_test, float(t.mean()))
    assert metrics["finetune_rmse"] == pytest.approx(closed["rmse"], rel=0.25)


def test_fit_probe_picks_the_best_validation_epoch() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    head, best, history = fit_probe(x, y, x[:16], y[:16], "classification", 2, 8, 16, 0.1, 0.0, 0)
    keys = [(-h["val_top1"], h["val_loss"]) for h in history]
    assert best == 1 + keys.index(min(keys))
    assert float((head.predict(x[:16]) == y[:16]).double().mean()) == history[best - 1]["val_top1"]


# Full fine-tuning and run folders.


@pytest.fixture(scope="module")
def run_dir(data: Path) -> Path:
    plan = compile_recipe(load_yaml(data / "recipe.yaml"), source="recipe", base_dir=data)
    out = data / "run"
    result = train_run(plan, out)
    assert result.finished
    return out


def test_probe_from_run_folder_leaves_encoder_unchanged(data: Path, run_dir: Path) -> None:
    before = load_run(run_dir).model.encoders["image"].state_dict()
    result = finetune(config(data, "run_probe", encoder=run_dir), log=quiet)
    assert read_json(data / "run_probe" / "finetune.json")["encoder_kind"] == "run"
    assert result.metrics["finetune_top1"] >= result.metrics["chance"] + 0.3
    after = result.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_full_mode_changes_encoder_weights(data: Path, run_dir: Path) -> None:
    before = load_run(run_dir).model.encoders["image"].state_dict()
    cfg = config(data, "run_full", encoder=run_dir, mode="full", epochs=3, layer_decay=0.8, augment=True)
    result = finetune(cfg, log=quiet)
    saved = load_file(str(data / "run_full" / "encoder.safetensors"))
    assert set(saved) == set(before)
    assert any(not torch.equal(before[k], saved[k]) for k in before)
    assert all(torch.equal(saved[k], v) for k, v in result.encoder.state_dict().items())
    settings = read_json(data / "run_full" / "finetune.json")
    assert settings["encoder_lr"] == pytest.approx(settings["lr"] / 10)
    assert 1 <= result.metrics["finetune_epoch"] <= 3


def test_released_encoder_from_a_recipe(data: Path) -> None:
    """A (tiny, locally saved) Hugging Face ViT named in the recipe: probe keeps it, full mode trains it."""
    transformers = pytest.importorskip("transformers")
    folder = data / "vit"
    torch.manual_seed(0)
    vit = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4
    )
    transformers.ViTModel(vit).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    recipe = RECIPE.replace(
        "    options: {image_size: 8", "    encoder: {library: transformers, path: vit}\n    options: {image_size: 8"
    )
    (data / "released.yaml").write_text(recipe)
    original = transformers.ViTModel.from_pretrained(folder).state_dict()
    probe = finetune(config(data, "hf_probe", encoder=data / "released.yaml"), log=quiet)
    assert read_json(data / "hf_probe" / "finetune.json")["released"] is True
    assert probe.metrics["finetune_top1"] >= probe.metrics["chance"] + 0.3
    full = finetune(config(data, "hf_full", encoder=data / "released.yaml", mode="full", epochs=2, layer_decay=0.7))
    saved = load_file(str(data / "hf_full" / "encoder.safetensors"))
    changed = [
        k
        for k in saved
        if k.removeprefix("model.") in original and not torch.equal(saved[k], original[k.removeprefix("model.")])
    ]
    assert changed and full.metrics["finetune_epoch"] >= 1


# The command line and errors.


def test_cli_writes_eval_json(data: Path) -> None:
    out = data / "cli"
    args = ["finetune", str(data / "recipe.yaml"), "--modality", "image", "--train", str(data / "train.csv")]
    args += ["--test", str(data / "test.jsonl"), "--label", "cls", "--epochs", "10", "--output", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = read_json(out / "eval.json")
    assert f"{'finetune_top1':32s} {metrics['finetune_top1']:.4f}" in result.output
    assert f"wrote {out / 'eval.json'}" in result.output


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": "kind"}, "label column 'kind' not found; columns are ['image', 'caption', 'cls'"),
        ({"modality": "audio"}, "modality 'audio' is not in the recipe"),
        ({"task": "regression"}, "holds a value that is not a finite number (row 1: 'b')"),
        ({"column": "picture"}, "column 'picture' of modality 'image' not found"),
    ],
)
def test_errors_name_the_problem(data: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(FinetuneError, match=None) as err:
        finetune(config(data, "bad", **kwargs), log=quiet)
    assert message in str(err.value)


def test_one_class_and_bad_encoder_errors(data: Path, tmp_path: Path) -> None:
    one = data / "one.csv"  # next to the images its rows name
    rows = (data / "train.csv").read_text().splitlines()
    one.write_text("\n".join([rows[0], *(r for r in rows[1:] if r.split(",")[2] == "a")]) + "\n")
    with pytest.raises(FinetuneError, match=r"one\.csv: label column 'cls' has one class \('a'\)"):
        finetune(config(data, "bad", train=one), log=quiet)
    for bad in (tmp_path, tmp_path / "missing", one):
        with pytest.raises(FinetuneError, match="is neither an mmssl run folder"):
            finetune(config(data, "bad", encoder=bad), log=quiet)
    result = CliRunner().invoke(
        app,
        ["finetune", str(tmp_path), "--modality", "image", "--train", str(one), "--test", str(one), "-o", "x"],
    )
    assert result.exit_code == 2 and "is neither an mmssl run folder" in result.output


def test_long_text_values_are_not_taken_for_file_names(tmp_path: Path) -> None:
    """A value longer than a file name may be (255 bytes) is text, not an OSError (seen on real emails)."""
    from mmssl.finetune import read_labelled

    long_text = "spam offer " * 60
    manifest = tmp_path / "long.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows([{"text": long_text, "label": "spam"}, {"text": "lunch at noon", "label": "ham"}])
    rows = read_labelled(manifest, "text", "label", "auto", "text")
    assert rows.column_kind == "value" and rows.values[0] == long_text
