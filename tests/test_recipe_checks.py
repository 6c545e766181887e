"""Small truths of recipes and their docs: duplicate keys, warmup longer than the run, bad override values, the
options the docs name, progress output in log files, and exports that never replace a folder they did not write."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.export.open_clip import _write_folder
from mmssl.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "recipes" / "tiny_image_text.yaml"


def test_duplicate_top_level_key_is_refused(tmp_path: Path) -> None:
    text = TINY.read_text()
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(text + "\nseed: 7\n")  # `seed: 3` is already given at the top
    with pytest.raises(RecipeError, match=r"key 'seed' is given twice \(lines 4 and \d+\)"):
        compile_recipe(recipe)


def test_duplicate_nested_key_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(TINY.read_text().replace("  steps: 6\n", "  steps: 6\n  steps: 60\n"))
    with pytest.raises(RecipeError, match="key 'steps' is given twice"):
        compile_recipe(recipe)


def test_warmup_longer_than_the_run_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"train.warmup_steps: .*warmup_steps \(10\) is larger than steps \(6\)"):
        compile_recipe(TINY, ["train.warmup_steps=10"])


def test_unquoted_no_is_the_precision_no(tmp_path: Path) -> None:
    """YAML 1.1 reads `no` as false; `precision: no` (the documented default) must still mean no mixed precision,
    in a recipe file and in an override, while other values stay refused."""
    assert compile_recipe(TINY, ["train.precision=no"]).recipe.train.precision == "no"
    recipe = tmp_path / "no.yaml"
    recipe.write_text(TINY.read_text().replace("  steps: 6\n", "  steps: 6\n  precision: no\n"))
    assert compile_recipe(recipe).recipe.train.precision == "no"
    with pytest.raises(RecipeError, match="train.precision"):
        compile_recipe(TINY, ["train.precision=true"])


def test_bad_override_yaml_names_the_override() -> None:
    result = CliRunner().invoke(app, ["train", str(TINY), "train.steps=[1", "-o", "/nonexistent/run"])
    assert result.exit_code == 2
    assert "override 'train.steps=[1': the value is not valid YAML" in result.output
    assert "Traceback" not in result.output


def test_concat_takes_parts_as_the_docs_say(tmp_path: Path) -> None:
    tree = yaml.safe_load(TINY.read_text())
    tree["data"]["train"] = {"source": "concat", "parts": [tree["data"]["train"], tree["data"]["test"]]}
    recipe = tmp_path / "concat.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    compile_recipe(recipe)
    assert "`concat` | `parts`" in (ROOT / "docs" / "recipes.md").read_text()


def test_progress_off_a_terminal_writes_plain_lines() -> None:
    from mmssl.train.progress import LineProgress, progress

    stream = io.StringIO()
    bar = progress(10, 0, "demo", stream=stream)
    assert isinstance(bar, LineProgress)
    for step in range(1, 11):
        bar.update(1)
        if step % 5 == 0:
            bar.set_postfix(loss=f"{1.0 / step:.4f}")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" (")[0] for line in lines] == ["demo step 5/10 loss=0.2000", "demo step 10/10 loss=0.1000"]


def test_open_clip_export_never_replaces_a_downloaded_model(tmp_path: Path) -> None:
    downloaded = tmp_path / "ViT-B-32"
    downloaded.mkdir()
    (downloaded / "open_clip_config.json").write_text("{}")
    (downloaded / "open_clip_model.safetensors").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match="is not an earlier export"):
        _write_folder(downloaded, {"open_clip_config.json": b"{}", "mmssl_export.json": b"{}"})
    assert (downloaded / "open_clip_model.safetensors").read_bytes() == b"weights"
    earlier = tmp_path / "export"
    _write_folder(earlier, {"open_clip_config.json": b"{}", "mmssl_export.json": b"{}"})
    _write_folder(earlier, {"open_clip_config.json": b"{\"v\": 2}", "mmssl_export.json": b"{}"})  # its own export
    assert (earlier / "open_clip_config.json").read_text() == '{"v": 2}'
