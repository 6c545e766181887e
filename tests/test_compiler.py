"""The one recipe compiler: every command goes through ``compile_recipe``, nothing else reads a recipe into a plan,
and ``validate`` refuses (with the key path, before any weights load) what training would refuse later."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_finetune import RECIPE, write_manifest
from typer.testing import CliRunner

from mmssl import compiler
from mmssl.cli import app
from mmssl.compiler import Plan, compile_recipe
from mmssl.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "recipes" / "tiny_image_text.yaml"

# Names that turn YAML into a plan, or change a plan's parts, other than through the compiler.
COMPILE_STEPS = {"parse_recipe", "load_yaml", "load_plugin_file", "load_released", "Plan", "adopt", "_Compiler"}
# Where those names may be called: the compiler, and the modules that define them.
ALLOWED = {"mmssl/compiler.py", "mmssl/recipe.py", "mmssl/plugins.py", "mmssl/encoders/base.py"}


def called_names(file: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            yield func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_no_other_module_compiles_a_recipe() -> None:
    """The absence of any other caller: no module of mmssl/ or benchmarks/ but the compiler parses a recipe,
    loads plugin files or released encoders, lets a plugin adopt, or makes a Plan."""
    offenders = []
    for file in sorted([*ROOT.glob("mmssl/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
        rel = file.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        offenders += [f"{rel}: {name}" for name in called_names(file) if name in COMPILE_STEPS]
    assert offenders == []
    # ... and the benchmarks, like every command, call the compiler.
    for rel in ("benchmarks/clip_step.py", "benchmarks/mae_speedup.py", "mmssl/run.py", "mmssl/cli.py"):
        assert "compile_recipe" in set(called_names(ROOT / rel)), rel


def test_the_plan_is_frozen() -> None:
    plan = compile_recipe(TINY, weights=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.recipe = plan.recipe  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.modality_options["image"] = plan.modality_options["text"]  # type: ignore[index]


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source of every recipe compiled from now on."""
    seen: list[str] = []
    original = compiler._Compiler.compile

    def counting(self: compiler._Compiler, load_weights: set[str]) -> Plan:
        seen.append(self.source)
        return original(self, load_weights)

    monkeypatch.setattr(compiler._Compiler, "compile", counting)
    return seen


def test_every_command_goes_through_the_compiler(tmp_path: Path, compiled: list[str]) -> None:
    write_manifest(tmp_path, "train", 16, 0)
    write_manifest(tmp_path, "test", 8, 1, fmt="jsonl")
    tree = yaml.safe_load(RECIPE)
    tree["data"]["test"] = {"source": "manifest", "path": "test.jsonl", "path_columns": ["image"]}
    tree["evaluations"] = [{"name": "knn", "modality": "image", "bank": "train", "query": "test", "k": 3}]
    tree["data"]["train"]["label_column"] = tree["data"]["test"]["label_column"] = "cls"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    run = tmp_path / "run"
    runner = CliRunner()
    commands = {
        "validate": ["validate", str(recipe)],
        "train": ["train", str(recipe), "--output", str(run), "--no-eval"],
        "eval": ["eval", str(run)],
        "embed": ["embed", str(run), "--modality", "image", "--output", str(tmp_path / "e.safetensors")],
        "export": ["export", str(run), "--format", "safetensors", "--output", str(tmp_path / "export")],
        "finetune": [
            "finetune", str(recipe), "--modality", "image", "--train", str(tmp_path / "train.csv"),
            "--test", str(tmp_path / "test.jsonl"), "--output", str(tmp_path / "ft"), "--label", "cls",
            "--epochs", "2", "--val-fraction", "0",
        ],
    }  # fmt: skip
    for name, args in commands.items():
        before = len(compiled)
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (name, result.output)
        assert len(compiled) > before, f"`mmssl {name}` did not go through compile_recipe"


def released_tree(objective: dict) -> dict:
    """An image recipe on a released timm encoder that does not exist: validation must not need it."""
    tree = yaml.safe_load(TINY.read_text())
    tree["modalities"].pop("text")
    tree["modalities"]["image"]["encoder"] = {"library": "timm", "model": "vit_tiny", "path": "weights.safetensors"}
    tree["objectives"] = [objective]
    tree["evaluations"] = []
    tree["train"]["layer_decay"] = None
    return tree


@pytest.mark.parametrize("name", ["mae", "data2vec"])
def test_validate_refuses_token_dropping_masks_on_a_released_encoder(tmp_path: Path, name: str) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")  # exists, but is never read: no weights load
    with pytest.raises(RecipeError) as info:
        compile_recipe(released_tree({"name": name, "modality": "image"}), base_dir=tmp_path, weights=False)
    [(path, message)] = info.value.errors
    assert path == "objectives[0]"
    assert "modalities.image.encoder" in message and "cannot drop hidden" in message


def test_validate_refuses_an_objective_the_plugin_cannot_serve(tmp_path: Path) -> None:
    tree = yaml.safe_load(TINY.read_text())
    tree["objectives"] = [{"name": "mlm", "modality": "image"}]
    with pytest.raises(RecipeError) as info:
        compile_recipe(tree, weights=False)
    [(path, message)] = info.value.errors
    assert path == "objectives[0]" and "masking categorical" in message


def test_unknown_encoder_library_lists_the_registered_ones(tmp_path: Path) -> None:
    tree = released_tree({"name": "simclr", "modality": "image"})
    tree["modalities"]["image"]["encoder"]["library"] = "nope"
    with pytest.raises(RecipeError) as info:
        compile_recipe(tree, base_dir=tmp_path, weights=False)
    [(path, message)] = info.value.errors
    assert path == "modalities.image.encoder.library"
    assert "unknown encoder library 'nope'; valid choices:" in message
    assert all(name in message for name in ("open_clip", "timm", "transformers"))


def test_each_library_owns_its_options_model(tmp_path: Path) -> None:
    tree = released_tree({"name": "simclr", "modality": "image"})
    tree["modalities"]["image"]["encoder"] = {"library": "open_clip", "model": "ViT-B-32", "pretrained": "x"}
    with pytest.raises(RecipeError) as info:
        compile_recipe(tree, base_dir=tmp_path, weights=False)
    assert info.value.errors == [("modalities.image.encoder.tower", "Field required")]
    # open_clip's `tower` is not a key timm knows; the plan holds each library's own options model.
    tree["modalities"]["image"]["encoder"] = {
        "library": "timm",
        "model": "m",
        "path": "w.safetensors",
        "tower": "image",
    }
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(RecipeError) as info:
        compile_recipe(tree, base_dir=tmp_path, weights=False)
    [(path, message)] = info.value.errors
    assert path == "modalities.image.encoder.tower" and message.startswith("unknown key 'tower' (allowed keys: ")
    allowed = message.split("allowed keys: ")[1]
    assert "model" in allowed and "tower" not in allowed  # timm's own options model, not open_clip's
    del tree["modalities"]["image"]["encoder"]["tower"]
    plan = compile_recipe(tree, base_dir=tmp_path, weights=False)
    spec = plan.encoder_spec("image")
    assert type(spec).__name__ == "TimmOptions" and spec.model == "m" and spec.kwargs == {}
