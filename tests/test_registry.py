"""Registries and plugin discovery: names, errors, entry points and plugin files named in recipes."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

import mmssl_image
import mmssl_text
from mmssl.compiler import compile_recipe
from mmssl.objectives import OBJECTIVES
from mmssl.plugins import (
    ENTRY_POINT_GROUP,
    MODALITIES,
    PluginError,
    all_modalities,
    get_modality,
    load_entry_points,
    load_plugin_file,
)
from mmssl.recipe import RecipeError
from mmssl.registry import Registry, RegistryError, normalize_name

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"

COPY_PLUGIN = '''"""A user plugin: the image plugin's functions under another name."""
from dataclasses import replace

from mmssl_image import plugin as image

plugin = replace(image, name="image_copy", description="a copy of the image plugin")
'''


# Registry.


def test_register_and_get() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1)

    @reg.register("beta")
    def beta() -> int:
        return 2

    assert reg.get("alpha") == 1
    assert reg.get("beta") is beta
    assert reg.names() == ["alpha", "beta"]
    assert list(reg.items()) == [("alpha", 1), ("beta", beta)]
    assert len(reg) == 2
    assert "alpha" in reg and "gamma" not in reg and 3 not in reg


def test_duplicate_name_raises() -> None:
    reg: Registry[object] = Registry("thing")
    first, second = object(), object()
    reg.register("alpha", first)
    with pytest.raises(RegistryError, match="thing 'Alpha' is already registered"):
        reg.register("Alpha", second)
    assert reg.get("alpha") is first
    reg.register("alpha", first)  # the same object again is harmless
    reg.register("alpha", second, replace=True)
    assert reg.get("alpha") is second


def test_unknown_name_lists_valid_ones() -> None:
    reg: Registry[int] = Registry("gizmo")
    reg.register("Sim-CLR", 1)
    reg.register("mae", 2)
    with pytest.raises(RegistryError) as info:
        reg.get("byol")
    assert str(info.value) == "unknown gizmo 'byol'; valid choices: Sim-CLR, mae"


def test_unknown_name_in_empty_registry() -> None:
    with pytest.raises(RegistryError, match=r"\(none registered\)"):
        Registry("gizmo").get("x")


@pytest.mark.parametrize("spelling", ["simclr", "SimCLR", "Sim-CLR", "sim_clr", "sim clr", "SIM-CLR"])
def test_name_normalisation(spelling: str) -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("simclr", 7)
    assert normalize_name(spelling) == "simclr"
    assert reg.get(spelling) == 7
    assert spelling in reg


def test_normalised_duplicates_raise() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("sim_clr", 1)
    with pytest.raises(RegistryError):
        reg.register("Sim-CLR", 2)


def test_resolve_accepts_names_and_objects() -> None:
    reg: Registry[object] = Registry("thing")
    obj = object()
    reg.register("x", obj)
    other = object()
    assert reg.resolve("X") is obj
    assert reg.resolve(other) is other


def test_objective_registry_is_normalised() -> None:
    assert OBJECTIVES.get("Sim-CLR") is OBJECTIVES.get("simclr")
    assert {"clip", "siglip", "simclr", "mae", "mlm"} <= set(OBJECTIVES.names())


# Entry points.


def test_entry_points_declare_image_and_text() -> None:
    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert names["image"] == "mmssl_image:plugin"
    assert names["text"] == "mmssl_text:plugin"


def test_discovery_finds_image_and_text() -> None:
    load_entry_points()
    assert get_modality("image") is mmssl_image.plugin
    assert get_modality("Text") is mmssl_text.plugin
    found = {p.name: p for p in all_modalities()}
    assert found["image"].capabilities.masking == "continuous"
    assert found["text"].capabilities.masking == "categorical"


def test_unknown_modality_lists_registered_ones() -> None:
    with pytest.raises(RegistryError) as info:
        get_modality("smell")
    assert "unknown modality 'smell'" in str(info.value)
    assert "image" in str(info.value) and "text" in str(info.value)


# Plugin files.


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the whole module: registrations are process-wide, keyed by the file's path."""
    folder = tmp_path_factory.mktemp("user_plugins")
    (folder / "image_copy_plugin.py").write_text(COPY_PLUGIN)
    return folder


def test_load_plugin_file_registers_its_plugin(plugin_dir: Path) -> None:
    names = load_plugin_file("image_copy_plugin.py", plugin_dir)
    assert names == ["image_copy"]
    copy = MODALITIES.get("image_copy")
    assert copy is not mmssl_image.plugin
    assert copy.build_encoder is mmssl_image.plugin.build_encoder
    assert copy.build_processor is mmssl_image.plugin.build_processor
    assert copy.description == "a copy of the image plugin"
    assert MODALITIES.get("Image-Copy") is copy
    # Loading the same file again (a second recipe naming it) is idempotent.
    assert load_plugin_file(plugin_dir / "image_copy_plugin.py") == ["image_copy"]
    assert MODALITIES.get("image_copy") is copy


def test_recipe_names_a_plugin_file(plugin_dir: Path) -> None:
    tree = yaml.safe_load(TINY.read_text())
    image = tree["modalities"].pop("image")
    tree["modalities"]["picture"] = {"plugin": "image_copy", "column": "image", "options": image["options"]}
    tree["plugins"] = ["image_copy_plugin.py"]  # relative to the recipe's folder
    tree["objectives"] = [
        {"name": "clip", "modalities": ["picture", "text"]},
        {"name": "mae", "modality": "picture", "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2},
    ]
    tree["evaluations"] = [{"name": "knn", "modality": "picture", "k": 5}]
    recipe_file = plugin_dir / "uses_plugin.yaml"
    recipe_file.write_text(yaml.safe_dump(tree, sort_keys=False))

    plan = compile_recipe(recipe_file)
    assert plan.plugins["picture"].name == "image_copy"
    assert plan.plugins["picture"].build_encoder is mmssl_image.plugin.build_encoder
    assert plan.modality_options["picture"].patch_size == 7
    assert plan.views()["picture"] == ["clean"]


def test_second_plugin_with_a_taken_name_is_rejected(plugin_dir: Path, tmp_path: Path) -> None:
    load_plugin_file(plugin_dir / "image_copy_plugin.py")
    other = tmp_path / "another_copy.py"
    other.write_text(COPY_PLUGIN)
    with pytest.raises(PluginError, match="'image_copy' is already registered by another plugin"):
        load_plugin_file(other)
    clash = tmp_path / "clash.py"
    clash.write_text(COPY_PLUGIN.replace('name="image_copy"', 'name="text"'))
    with pytest.raises(PluginError, match="'text' is already registered"):
        load_plugin_file(clash)
    assert get_modality("text") is mmssl_text.plugin


def test_missing_plugin_file(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as info:
        load_plugin_file("nowhere.py", tmp_path)
    assert "plugin file nowhere.py not found" in str(info.value)
    assert str(tmp_path / "nowhere.py") in str(info.value)


def test_recipe_with_missing_plugin_file(tmp_path: Path) -> None:
    tree = yaml.safe_load(TINY.read_text())
    tree["plugins"] = ["plugins/missing.py"]
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(tree))
    with pytest.raises(RecipeError) as info:
        compile_recipe(recipe_file)
    [(path, message)] = info.value.errors
    assert path == "plugins[0]"
    assert "plugin file plugins/missing.py not found" in message


def test_plugin_file_that_fails_to_import(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import mmssl_no_such_module\n")
    with pytest.raises(PluginError, match="broken.py failed to import: No module named 'mmssl_no_such_module'"):
        load_plugin_file(broken)


def test_plugin_file_without_plugin(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(PluginError, match="defines neither `plugin` nor `plugins`"):
        load_plugin_file(empty)


def test_plugin_file_with_wrong_type(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text("plugin = 'image'\n")
    with pytest.raises(PluginError, match="expected a ModalityPlugin, got str"):
        load_plugin_file(wrong)
