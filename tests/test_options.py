"""Options a user can see: ``mmssl modalities --options``, docs/plugin-options.md, unknown-key errors."""

from __future__ import annotations

import contextlib
import io
import runpy
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.recipe import RecipeError
from mmssl.schema import describe_options, unknown_key_message
from mmssl_image import ImageOptions

ROOT = Path(__file__).resolve().parents[1]


def test_modalities_options_prints_type_default_and_description() -> None:
    result = CliRunner().invoke(app, ["modalities", "--options", "image"])
    assert result.exit_code == 0, result.output
    for row in describe_options(ImageOptions):
        assert f"  {row.name}: {row.type} = {row.default}" in result.output
    assert "  encoder: 'auto' | 'vit' | 'resnet' = 'auto'" in result.output
    assert "Flip views horizontally" in result.output
    result = CliRunner().invoke(app, ["modalities", "--options", "imag"])
    assert result.exit_code == 2 and "image" in result.output


def test_docs_list_every_option_of_the_first_party_plugins() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(ROOT / "scripts" / "plugin_options_doc.py"), run_name="__main__")
    assert (ROOT / "docs" / "plugin-options.md").read_text() == out.getvalue(), (
        "docs/plugin-options.md is stale: python scripts/plugin_options_doc.py > docs/plugin-options.md"
    )
    assert "| `flip` | bool | `False` |" in out.getvalue()


def test_unknown_option_names_close_matches_and_allowed_keys() -> None:
    recipe = ROOT / "recipes" / "quickstart.yaml"
    with pytest.raises(RecipeError) as err:
        compile_recipe(recipe, ["modalities.image.options.widht=64"], weights=False)
    image = dict(err.value.errors)["modalities.image.options.widht"]
    assert "did you mean 'width'?" in image and "allowed keys:" in image
    assert all(name in image for name in ImageOptions.model_fields)
    with pytest.raises(RecipeError) as err:  # the fixed sections too (first validation pass)
        compile_recipe(recipe, ["train.stpes=3"], weights=False)
    assert "did you mean 'steps'?" in dict(err.value.errors)["train.stpes"]
    assert unknown_key_message("zzz", ["a", "b"]) == "unknown key 'zzz' (allowed keys: a, b)"
