"""Evaluations that keep their results: needs checked before training, eval.json written as results come, a failing
evaluation recorded beside the others, and `mmssl eval RUN key=value` to fix one without retraining."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.recipe import RecipeError, load_yaml

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"
FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def write_csv_manifest(folder: Path, rows: int, labels: bool = True) -> Path:
    """Fashion-MNIST test images as PNGs, a caption, and (``labels``) an integer label column: no class names."""
    images = np.frombuffer(gzip.open(FASHION / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    classes = np.frombuffer(gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", *(["label"] if labels else [])])
        for i in range(rows):
            Image.fromarray(images[i * 784 : (i + 1) * 784].reshape(28, 28)).save(folder / f"{i}.png")
            label = int(classes[i])
            writer.writerow([f"{i}.png", f"a photo of a {NAMES[label]}.", *([label] if labels else [])])
    return folder / "data.csv"


def csv_recipe(tmp_path: Path, labels: bool = True) -> dict[str, Any]:
    """The tiny recipe on a CSV manifest with integer labels, evaluated with kNN and zero-shot."""
    manifest = write_csv_manifest(tmp_path / "data", 40, labels)
    split = {"source": "manifest", "path": str(manifest), "path_columns": ["image"]}
    if labels:
        split["label_column"] = "label"
    tree = load_yaml(TINY)
    tree["data"] = {"train": split, "test": split}
    return tree


def write(tree: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")


# Checked before training.


def test_zero_shot_on_a_csv_manifest_without_class_names_is_refused_before_training(tmp_path: Path) -> None:
    """The issue's case: this recipe passed `mmssl validate`, trained, then died in evaluation."""
    recipe = write(csv_recipe(tmp_path), tmp_path / "recipe.yaml")
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 1, result.output
    assert "evaluations[1].class_names: zero_shot needs class names" in result.output
    assert "labels are integers or absent" in result.output
    assert "knn" not in result.output  # the kNN evaluation has its labels
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(recipe), "--output", str(out)])
    assert result.exit_code == 2 and "evaluations[1].class_names" in result.output
    assert not (out / "checkpoints").exists()
    # Naming the classes in the recipe (or an override) makes it valid.
    named = compile_recipe(recipe, [f"evaluations.1.class_names={json.dumps(NAMES)}"])
    assert named.recipe.evaluations[1]["class_names"]


def test_evaluations_on_unlabelled_rows_are_refused(tmp_path: Path) -> None:
    recipe = write(csv_recipe(tmp_path, labels=False), tmp_path / "recipe.yaml")
    with pytest.raises(RecipeError) as err:
        compile_recipe(recipe)
    found = err.value.errors
    for split in ("train", "test"):
        assert any(p == "evaluations[0]" and f"knn needs labelled rows in split {split!r}" in m for p, m in found)
    assert any(p == "evaluations[1]" and "zero_shot needs labelled rows in split 'test'" in m for p, m in found)
    assert "evaluations[1].class_names" in dict(found)


def test_the_prompt_modality_must_be_in_the_recipe(tmp_path: Path) -> None:
    tree = load_yaml(TINY)
    tree["evaluations"][1]["text"] = "caption"
    with pytest.raises(RecipeError, match=r"evaluations\[1\]: names modality 'caption', not in `modalities`"):
        compile_recipe(write(tree, tmp_path / "recipe.yaml"))


# A failing evaluation after training.


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """The tiny recipe whose zero-shot prompt has two {} for one class name: valid, and fails only when run."""
    folder = tmp_path_factory.mktemp("eval")
    tree = load_yaml(TINY)
    tree["evaluations"][1]["prompts"] = ["a photo of a {} {}."]
    recipe = write(tree, folder / "recipe.yaml")
    run = folder / "run"
    result = CliRunner().invoke(app, ["train", str(recipe), "train.steps=2", "--output", str(run)])
    return recipe, run, result


def test_a_failing_evaluation_is_recorded_and_the_others_stand(broken_run: tuple[Path, Path, Any]) -> None:
    _, run, result = broken_run
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    saved = json.loads((run / "eval.json").read_text())
    assert set(saved["errors"]) == {"zero_shot"}
    assert "IndexError" in saved["errors"]["zero_shot"]
    assert 0.0 <= saved["knn_top1"] <= 1.0 and saved["knn_chance"] == pytest.approx(0.1)
    assert not any(k.startswith("zero_shot_") for k in saved)
    assert "evaluations[1] (zero_shot) failed: IndexError" in result.output
    assert f"mmssl eval {run} evaluations.1.KEY=VALUE" in result.output
    assert "Traceback" not in result.output
    assert (run / "model.safetensors").is_file()


def test_eval_with_an_override_fixes_it_without_retraining(broken_run: tuple[Path, Path, Any]) -> None:
    _, run, _ = broken_run
    before = json.loads((run / "eval.json").read_text())
    weights = (run / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["eval", str(run), 'evaluations.1.prompts=["a photo of a {}."]'])
    assert result.exit_code == 0, result.output
    after = json.loads((run / "eval.json").read_text())
    assert "errors" not in after
    assert {k: v for k, v in after.items() if k.startswith("knn")} == {
        k: v for k, v in before.items() if k.startswith("knn")
    }
    assert 0.0 <= after["zero_shot_top1"] <= 1.0 and after["zero_shot_chance"] == pytest.approx(0.1)
    assert (run / "model.safetensors").read_bytes() == weights
    # The run's recipe.yaml stays the record of what was trained.
    assert yaml.safe_load((run / "recipe.yaml").read_text())["evaluations"][1]["prompts"] == ["a photo of a {} {}."]


@pytest.mark.parametrize("override", ["model.embed_dim=8", "data.train.limit=10", "train.steps=9", "seed=1"])
def test_eval_refuses_overrides_of_what_was_trained(broken_run: tuple[Path, Path, Any], override: str) -> None:
    _, run, _ = broken_run
    before = (run / "eval.json").read_text()
    result = CliRunner().invoke(app, ["eval", str(run), override])
    assert result.exit_code == 2, result.output
    key = override.split("=")[0]
    assert f"override {key!r}: `mmssl eval` changes only how a trained run is evaluated" in result.output
    assert (run / "eval.json").read_text() == before


def test_eval_override_errors_name_the_key(broken_run: tuple[Path, Path, Any]) -> None:
    _, run, _ = broken_run
    result = CliRunner().invoke(app, ["eval", str(run), "evaluations.0.k=0"])
    assert result.exit_code == 2
    assert "evaluations[0].k" in result.output


def test_each_result_is_written_as_soon_as_it_exists(
    broken_run: tuple[Path, Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped (Ctrl-C) inside zero-shot: the kNN result computed before it is already in eval.json."""
    import mmssl.eval.zero_shot as zero_shot
    from mmssl.run import evaluate, load_run

    _, run, _ = broken_run
    (run / "eval.json").unlink()

    def interrupted(*args: Any, **kwargs: Any) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(zero_shot, "zero_shot_accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(load_run(run, overrides=['evaluations.1.prompts=["a {}."]']))
    saved = json.loads((run / "eval.json").read_text())
    assert 0.0 <= saved["knn_top1"] <= 1.0 and "errors" not in saved
    assert not list(run.glob(".*tmp*"))  # written atomically, no temporary file left


def test_the_model_card_lists_a_failed_evaluation(tmp_path: Path) -> None:
    from mmssl.export.card import model_card
    from mmssl.recipe import parse_recipe

    (tmp_path / "eval.json").write_text(json.dumps({"knn_top1": 0.5, "errors": {"zero_shot": "ValueError: a | b"}}))
    card = model_card(parse_recipe(load_yaml(TINY)), "safetensors", {}, "", tmp_path)
    assert "| knn_top1 | 0.5000 |" in card and "| zero_shot | failed: ValueError: a / b |" in card
