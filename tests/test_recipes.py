"""Recipe validation: shipped recipes, misspelled keys with their key paths, overrides, capabilities, the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.recipe import RecipeError, apply_overrides, set_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "recipes" / "tiny_image_text.yaml"
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))
TEST_RECIPES = sorted((ROOT / "tests" / "recipes").rglob("*.yaml"))


def tiny_tree() -> dict[str, Any]:
    return yaml.safe_load(TINY.read_text())


def write_recipe(tmp_path: Path, change: Callable[[dict[str, Any]], None], name: str = "bad.yaml") -> Path:
    tree = tiny_tree()
    change(tree)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def recipe_errors(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as info:
        compile_recipe(path, weights=False)
    assert str(path) in str(info.value)
    return info.value.errors


def test_shipped_recipes_are_found() -> None:
    assert ROOT / "recipes" / "quickstart.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED + TEST_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_validates(path: Path) -> None:
    recipe = compile_recipe(path, weights=False).recipe
    assert recipe.name
    assert "train" in recipe.data
    assert recipe.base_dir == path.parent


def test_quickstart_content() -> None:
    recipe = compile_recipe(ROOT / "recipes" / "quickstart.yaml", weights=False).recipe
    assert [o["name"] for o in recipe.objectives] == ["clip"]
    assert recipe.column_of("text") == "caption"
    assert recipe.plugin_of("image") == "image"


def _set(section: str, key: str, value: Any, index: int | None = None) -> Callable[[dict[str, Any]], None]:
    def change(tree: dict[str, Any]) -> None:
        node = tree[section] if index is None else tree[section][index]
        node[key] = value

    return change


def test_misspelled_train_key(tmp_path: Path) -> None:
    errors = recipe_errors(write_recipe(tmp_path, _set("train", "stpes", 3)))
    assert len(errors) == 1 and errors[0][0] == "train.stpes"
    assert errors[0][1].startswith("unknown key 'stpes'; did you mean 'steps'? (allowed keys: steps, batch_size,")


def test_misspelled_objective_option(tmp_path: Path) -> None:
    errors = recipe_errors(write_recipe(tmp_path, _set("objectives", "temprature", 0.2, index=1)))
    assert len(errors) == 1 and errors[0][0] == "objectives[1].temprature"
    assert "did you mean 'temperature'?" in errors[0][1] and "proj_dim" in errors[0][1]


def test_unknown_objective_name_lists_valid_ones(tmp_path: Path) -> None:
    errors = recipe_errors(write_recipe(tmp_path, _set("objectives", "name", "simclrr", index=1)))
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "objectives[1].name"
    assert "unknown objective 'simclrr'" in message
    for valid in ("clip", "mae", "mlm", "simclr"):
        assert valid in message


def test_misspelled_modality_option(tmp_path: Path) -> None:
    def change(tree: dict[str, Any]) -> None:
        tree["modalities"]["image"]["options"]["widht"] = 64

    errors = recipe_errors(write_recipe(tmp_path, change))
    assert len(errors) == 1 and errors[0][0] == "modalities.image.options.widht"
    assert "did you mean 'width'?" in errors[0][1] and "patch_size" in errors[0][1]


def test_invalid_value_names_path_and_value(tmp_path: Path) -> None:
    errors = recipe_errors(write_recipe(tmp_path, _set("train", "schedule", "linear")))
    assert [p for p, _ in errors] == ["train.schedule"]
    assert "'linear'" in errors[0][1]


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    def change(tree: dict[str, Any]) -> None:
        tree["objectives"][0]["temprature"] = 0.1
        tree["modalities"]["text"]["options"]["dpeth"] = 2

    errors = recipe_errors(write_recipe(tmp_path, change))
    assert {p for p, _ in errors} == {"objectives[0].temprature", "modalities.text.options.dpeth"}


def test_mae_on_text_names_the_missing_capability(tmp_path: Path) -> None:
    def change(tree: dict[str, Any]) -> None:
        tree["objectives"].append({"name": "mae", "modality": "text"})

    errors = recipe_errors(write_recipe(tmp_path, change))
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "objectives[4]"
    assert "masking continuous" in message
    assert "masking (categorical)" in message  # what the text plugin offers instead


def test_mlm_on_image_names_the_missing_capability(tmp_path: Path) -> None:
    def change(tree: dict[str, Any]) -> None:
        tree["objectives"].append({"name": "mlm", "modality": "image"})

    errors = recipe_errors(write_recipe(tmp_path, change))
    assert errors[0][0] == "objectives[4]"
    assert "masking categorical" in errors[0][1]


@pytest.mark.parametrize(
    "objective",
    [{"name": "simclr", "modality": "audio"}, {"name": "clip", "modalities": ["image", "audio"]}],
    ids=["simclr", "clip"],
)
def test_objective_naming_undefined_modality(tmp_path: Path, objective: dict[str, Any]) -> None:
    errors = recipe_errors(write_recipe(tmp_path, lambda tree: tree["objectives"].append(objective)))
    assert len(errors) == 1
    assert errors[0][0] == "objectives[4]"
    assert "'audio' is not defined in `modalities`" in errors[0][1]


def test_evaluation_naming_undefined_split(tmp_path: Path) -> None:
    def change(tree: dict[str, Any]) -> None:
        tree["evaluations"][0]["query"] = "validation"

    errors = recipe_errors(write_recipe(tmp_path, change))
    assert errors[0][0] == "evaluations[0]"
    assert "'validation'" in errors[0][1]


def test_missing_train_split(tmp_path: Path) -> None:
    def change(tree: dict[str, Any]) -> None:
        tree["data"] = {"test": tree["data"]["test"]}

    errors = recipe_errors(write_recipe(tmp_path, change))
    assert errors == [("data", "a `train` split is required")]


# Overrides.


def test_overrides_parse_numbers_lists_and_list_items() -> None:
    tree = apply_overrides(
        tiny_tree(),
        [
            "train.steps=9",
            "train.lr=2.0e-4",
            "train.betas=[0.8, 0.9]",
            "objectives.1.weight=2",
            "objectives[2].mask_ratio=0.6",
            "modalities.image.options.flip=false",
        ],
    )
    assert tree["train"]["steps"] == 9 and isinstance(tree["train"]["steps"], int)
    assert tree["train"]["lr"] == pytest.approx(2e-4)
    assert tree["train"]["betas"] == [0.8, 0.9]
    assert tree["objectives"][1]["weight"] == 2
    assert tree["objectives"][2]["mask_ratio"] == 0.6
    assert tree["modalities"]["image"]["options"]["flip"] is False
    assert tree["objectives"][0]["name"] == "clip"  # untouched neighbours


def test_overrides_reach_the_validated_recipe() -> None:
    # PyYAML reads `2e-4` (no dot) as a string; the schema's float fields still take it as a number.
    recipe = compile_recipe(
        TINY, ["train.steps=9", "train.lr=2e-4", "objectives.1.weight=2", "train.betas=[0.8, 0.9]"], weights=False
    ).recipe
    assert recipe.train.steps == 9
    assert recipe.train.lr == pytest.approx(2e-4)
    assert recipe.objectives[1]["weight"] == 2
    assert recipe.train.betas == (0.8, 0.9)


def test_override_of_a_missing_list_index_is_a_clear_error() -> None:
    with pytest.raises(KeyError) as info:
        apply_overrides(tiny_tree(), ["objectives.9.weight=2"])
    assert "objectives.9.weight" in str(info.value)
    assert "objectives has no item 9" in str(info.value)


def test_override_into_a_scalar_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="train.steps is not a section"):
        set_path(tiny_tree(), "train.steps.every", 3)


def test_override_without_equals_sign() -> None:
    with pytest.raises(ValueError, match="expected key.path=value"):
        apply_overrides(tiny_tree(), ["train.steps"])


def test_override_with_misspelled_key_is_rejected() -> None:
    with pytest.raises(RecipeError) as info:
        compile_recipe(TINY, ["train.stpes=3"], weights=False)
    assert [path for path, _ in info.value.errors] == ["train.stpes"]
    assert "did you mean 'steps'?" in info.value.errors[0][1]


# The command line.


def test_cli_validate_ok_on_shipped_recipes() -> None:
    result = CliRunner().invoke(app, ["validate", *map(str, SHIPPED)])
    assert result.exit_code == 0, result.output
    for path in SHIPPED:
        assert f"ok  {path}" in result.output


def test_cli_validate_fails_naming_the_key(tmp_path: Path) -> None:
    bad = write_recipe(tmp_path, _set("objectives", "temprature", 0.2, index=1))
    result = CliRunner().invoke(app, ["validate", str(TINY), str(bad)])
    assert result.exit_code == 1
    assert f"ok  {TINY}" in result.output
    assert "objectives[1].temprature" in result.output


def test_cli_validate_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_cli_train_rejects_bad_override_before_training(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(TINY), "objectives.9.weight=2", "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "objectives has no item 9" in result.output
    assert not (tmp_path / "run").exists()
