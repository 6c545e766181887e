"""Errors for people: one message naming the file and what to do, the traceback only with --debug or MMSSL_DEBUG=1."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.errors import explain

IMAGE_RECIPE = {
    "name": "errors",
    "seed": 0,
    "data": {"train": {"source": "manifest", "path": "rows.csv", "path_columns": ["image"]}},
    "modalities": {
        "image": {
            "options": {"image_size": 8, "patch_size": 4, "channels": 1, "width": 8, "depth": 1, "heads": 1},
        }
    },
    "model": {"embed_dim": 4},
    "objectives": [{"name": "mae", "modality": "image", "mask_ratio": 0.5, "decoder_width": 8, "decoder_depth": 1}],
    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 0},
    "evaluations": [],
}


def write_recipe(folder: Path, tree: dict, images: int = 6, corrupt: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    if corrupt:
        (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing valid
        names.append("bad.png")
    (folder / "rows.csv").write_text("image\n" + "".join(f"{n}\n" for n in names))
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    return recipe


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"MMSSL_DEBUG": "", **(env or {})})


def assert_one_message(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    return result.output


def test_missing_data_file(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", IMAGE_RECIPE)
    (tmp_path / "r" / "rows.csv").unlink()
    result = invoke("train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval")
    assert_one_message(result, 2, f"manifest {tmp_path / 'r' / 'rows.csv'} not found", "Check the path")
    debug = invoke("--debug", "train", str(recipe), "--output", str(tmp_path / "run2"), "--no-eval")
    assert isinstance(debug.exception, FileNotFoundError)  # the traceback is the caller's to print
    env_debug = invoke("train", str(recipe), "--output", str(tmp_path / "run3"), "--no-eval", env={"MMSSL_DEBUG": "1"})
    assert isinstance(env_debug.exception, FileNotFoundError)


def test_missing_image_file(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", IMAGE_RECIPE)
    (tmp_path / "r" / "3.png").unlink()
    result = invoke("train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval")
    assert_one_message(result, 2, "3.png")


def test_corrupt_data_file(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", IMAGE_RECIPE, corrupt=True)
    result = invoke("train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval")
    assert_one_message(result, 2, "bad.png", "--debug")


def test_damaged_fashion_mnist_file(tmp_path: Path) -> None:
    from mmssl.datasets.fashion_mnist import FILES

    folder = tmp_path / "fmnist"
    folder.mkdir()
    for name in FILES["train"]:
        (folder / name).write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)  # a gzip header, then a truncated stream
    tree = {**IMAGE_RECIPE, "data": {"train": {"source": "fashion_mnist", "split": "train", "root": str(folder)}}}
    recipe = write_recipe(tmp_path / "r", tree)
    result = invoke("train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval")
    assert_one_message(result, 2, f"Fashion-MNIST file {folder / FILES['train'][0]} is damaged", "download it again")


def test_bad_plugin_file(tmp_path: Path) -> None:
    tree = {**IMAGE_RECIPE, "plugins": ["broken.py"]}
    recipe = write_recipe(tmp_path / "r", tree)
    (tmp_path / "r" / "broken.py").write_text("raise RuntimeError('this plugin is broken')\n")
    result = invoke("train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval")
    assert_one_message(result, 2, "plugins[0]", str(tmp_path / "r" / "broken.py"), "this plugin is broken")


def test_plugin_file_needing_a_missing_package(tmp_path: Path) -> None:
    tree = {**IMAGE_RECIPE, "plugins": ["needs.py"]}
    recipe = write_recipe(tmp_path / "r", tree)
    (tmp_path / "r" / "needs.py").write_text("import mmssl_no_such_package_xyz\n")
    result = invoke("train", str(recipe), "--output", str(tmp_path / "run"), "--no-eval")
    assert_one_message(
        result, 2, "needs.py", "No module named 'mmssl_no_such_package_xyz'", "pip install 'mmssl_no_such_package_xyz'"
    )


def test_explain_missing_package_and_full_disk(tmp_path: Path) -> None:
    message, hint, code = explain(ModuleNotFoundError("No module named 'open_clip'", name="open_clip"))
    assert message.startswith("missing package 'open_clip'") and hint == "Install it: pip install 'open-clip-torch'"
    assert code == 1
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.safetensors"))
    message, hint, _ = explain(RuntimeError("saving failed"))
    assert message == "RuntimeError: saving failed" and "--debug" in hint
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = full
    message, hint, _ = explain(wrapped)
    assert message.startswith(f"no space left on device writing {tmp_path / 'model.safetensors'} (")
    assert f"free in {tmp_path})" in message and "--resume" in hint


def test_worker_traceback_is_cut_to_its_last_line() -> None:
    err = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                     '  File "x.py", line 1\nValueError: rows.csv row 3: cannot identify image file')  # fmt: skip
    assert explain(err)[0] == "ValueError: rows.csv row 3: cannot identify image file"


def test_train_help_names_the_stop_exit_code_and_resume_step() -> None:
    result = invoke("train", "--help")
    assert "--resume-step" in result.output and "code 75" in result.output
