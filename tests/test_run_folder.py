"""One run, one recipe, no code without consent.

A run folder's setup is written atomically and never mixed with another recipe's; ``--resume`` compares recipes;
commands reading a run folder import its plugin files only with ``--trust-plugins`` and only when unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import mmssl.train.trainer as trainer_module
from mmssl.cli import app
from mmssl.compiler import compile_recipe
from mmssl.plugins import MODALITIES
from mmssl.registry import normalize_name
from mmssl.train.trainer import RunExistsError, train

TINY = Path(__file__).resolve().parent / "recipes" / "tiny_image_text.yaml"


def tiny_plan(*overrides: str):
    return compile_recipe(TINY, list(overrides))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the tiny recipe stopped at its step-2 checkpoint (tests copy it)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = train(tiny_plan("train.steps=4"), out, stop_after=2)
    assert not result.finished and result.step == 2
    return out


# Leftovers and atomic setup.


def test_leftover_setup_without_checkpoint_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "processors" / "image").mkdir(parents=True)  # what a run that died before its first checkpoint leaves
    result = CliRunner().invoke(app, ["train", str(TINY), "train.steps=2", "-o", str(out), "--no-eval"])
    assert result.exit_code == 2
    assert "holds the setup of a run that has no checkpoint yet (processors)" in result.output
    assert "--resume" in result.output and f"rm -r {out}" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["processors"]  # nothing written


def test_crash_while_writing_processors_leaves_a_folder_that_trains_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real_save = trainer_module.save_processors

    def crash(processors, folder: Path) -> None:
        real_save({m: p for m, p in list(processors.items())[:1]}, folder)  # one modality written, then the crash
        raise KeyboardInterrupt("killed while writing processors/")

    monkeypatch.setattr(trainer_module, "save_processors", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_plan("train.steps=2"), out)
    assert not (out / "processors").exists() and not (out / "run.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".processors.tmp")]  # only a hidden temporary
    with pytest.raises(FileNotFoundError, match="no run setup"):  # nothing to resume: said clearly
        train(tiny_plan("train.steps=2"), out, resume=True)
    monkeypatch.setattr(trainer_module, "save_processors", real_save)
    result = train(tiny_plan("train.steps=2"), out)  # training again just works
    assert result.finished
    assert sorted(p.name for p in (out / "processors").iterdir()) == ["image", "text"]
    assert not list(out.glob(".processors.tmp*"))


def test_incomplete_setup_is_refused_on_resume(stopped: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(stopped / "processors", out / "processors")  # setup interrupted before run.json
    with pytest.raises(RunExistsError, match=r"setup is incomplete .* no run.json"):
        train(tiny_plan("train.steps=4"), out, resume=True)


def test_setup_without_checkpoint_resumes_from_step_zero(stopped: Path, tmp_path: Path) -> None:
    out = shutil.copytree(stopped, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    result = train(tiny_plan("train.steps=2"), out, resume=True)
    assert result.finished and result.step == 2


# --resume compares the recipe.


def test_resume_with_changed_width_is_refused(stopped: Path, tmp_path: Path) -> None:
    out = shutil.copytree(stopped, tmp_path / "run")
    before = (out / "recipe.yaml").read_text()
    result = CliRunner().invoke(
        app, ["train", str(TINY), "train.steps=4", "modalities.image.options.width=48", "-o", str(out), "--resume"]
    )
    assert result.exit_code == 2, result.output
    assert "modalities.image.options.width: 32 -> 48" in result.output
    assert "Traceback" not in result.output and "size mismatch" not in result.output
    assert (out / "recipe.yaml").read_text() == before


def test_resume_with_changed_seed_data_or_lr_lists_every_key(stopped: Path, tmp_path: Path) -> None:
    out = shutil.copytree(stopped, tmp_path / "run")
    plan = tiny_plan("train.steps=4", "seed=4", "data.train.limit=128", "train.lr=0.01")
    with pytest.raises(ValueError) as err:  # RecipeChangedError
        train(plan, out, resume=True)
    for key in ("seed: 3 -> 4", "data.train.limit: 256 -> 128", "train.lr: 0.001 -> 0.01"):
        assert key in str(err.value)


def test_resume_with_more_steps_continues_and_records_it(stopped: Path, tmp_path: Path) -> None:
    out = shutil.copytree(stopped, tmp_path / "run")
    result = train(tiny_plan("train.steps=5", "train.log_every=5"), out, resume=True)
    assert result.finished and result.step == 5
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["steps"] == 5
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["log_every"] == 5
    history = json.loads((out / "run.json").read_text())["history"]
    assert history == [
        {
            "resumed_at_step": 2,
            "changed": {"train.log_every": {"from": 1, "to": 5}, "train.steps": {"from": 4, "to": 5}},
        }
    ]


def test_resumed_interval_logs_the_mean_of_the_whole_interval(tmp_path: Path) -> None:
    """log_every 3, checkpoint every 2: the step-3 line averages steps 1-3 also when the run resumed at step 2."""
    overrides = ("train.steps=3", "train.log_every=3", "train.checkpoint_every=2", "model.embed_dim=8")
    plan_a = tiny_plan(*overrides)
    train(plan_a, tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    shutil.copytree(tmp_path / "a" / "processors", b / "processors")  # same tokenizer as run A
    for name in ("labels.json", "recipe.yaml", "run.json"):
        shutil.copy(tmp_path / "a" / name, b / name)
    train(tiny_plan(*overrides), b, resume=True, stop_after=2)
    train(tiny_plan(*overrides), b, resume=True)

    def line(run: Path) -> dict:
        (record,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return record

    a_line, b_line = line(tmp_path / "a"), line(b)
    assert a_line["step"] == b_line["step"] == 3
    for key in ("loss", "clip/loss", "mae/loss", "grad_norm"):
        assert b_line[key] == a_line[key], key


# No code without consent.

PLUGIN = """
from dataclasses import replace
from pathlib import Path

from mmssl_image import plugin as image

with Path(__file__).with_name("marker.txt").open("a") as handle:
    handle.write("imported\\n")
plugin = replace(image, name="{name}")
"""


def forget_plugin(name: str, file: Path) -> None:
    """Undo the plugin file's import in this process, so the next import would run it again."""
    MODALITIES._items.pop(normalize_name(name), None)
    MODALITIES._names.pop(normalize_name(name), None)
    sys.modules.pop("mmssl_user_plugin_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12], None)


@pytest.fixture()
def plugin_run(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """A finished run whose recipe names a plugin file (in the run's recipe folder) that writes marker.txt."""
    name = f"pixels_{tmp_path.name[-12:].replace('-', '_')}"
    work = tmp_path / "work"
    work.mkdir()
    plugin = work / "pixels.py"
    plugin.write_text(PLUGIN.format(name=name))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        np.save(work / f"{i}.npy", rng.random((8, 8), dtype=np.float32))
        rows.append(json.dumps({"image": f"{i}.npy", "label": ["a", "b", "c"][i % 3]}))
    (work / "data.jsonl").write_text("\n".join(rows) + "\n")
    data = {"source": "manifest", "path": "data.jsonl", "path_columns": ["image"], "label_column": "label"}
    recipe = {
        "name": "plugin_run",
        "plugins": ["pixels.py"],
        "data": {"train": data, "test": data},
        "modalities": {
            "image": {
                "plugin": name,
                "options": {"image_size": 8, "patch_size": 4, "channels": 1, "width": 8, "depth": 1, "heads": 1},
            }
        },
        "model": {"embed_dim": 4},
        "objectives": [{"name": "simclr", "modality": "image", "proj_dim": 4, "hidden_dim": 8}],
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 1},
        "evaluations": [{"name": "knn", "modality": "image", "k": 1}],
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(work / "recipe.yaml"), "-o", str(run), "--no-eval"])
    assert result.exit_code == 0, result.output
    marker = work / "marker.txt"
    assert marker.read_text() == "imported\n"  # training a recipe runs its plugins (the user chose it)
    marker.unlink()
    forget_plugin(name, plugin)
    yield run, work, marker, name
    forget_plugin(name, plugin)


def consent_commands(run: Path, work: Path, tmp_path: Path) -> dict[str, list[str]]:
    labelled = str(work / "data.jsonl")
    return {
        "eval": ["eval", str(run)],
        "embed": ["embed", str(run), "--modality", "image", "-o", str(tmp_path / "e.safetensors")],
        "export": ["export", str(run), "-o", str(tmp_path / "export")],
        "finetune": ["finetune", str(run), "--modality", "image", "--train", labelled, "--test", labelled, "-o",
                     str(tmp_path / "ft"), "--epochs", "1"],
        "resume": ["train", str(work / "recipe.yaml"), "train.steps=3", "-o", str(run), "--resume", "--no-eval"],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["eval", "embed", "export", "finetune", "resume"])
def test_run_folder_plugins_need_consent(plugin_run: tuple[Path, Path, Path, str], command: str) -> None:
    run, work, marker, name = plugin_run
    args = consent_commands(run, work, run.parent)[command]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0
    assert "--trust-plugins" in refused.output, refused.output
    assert not marker.exists()
    allowed = CliRunner().invoke(app, [*args, "--trust-plugins"])
    assert allowed.exit_code == 0, allowed.output
    assert marker.read_text() == "imported\n"


def test_changed_plugin_file_is_refused(plugin_run: tuple[Path, Path, Path, str]) -> None:
    run, work, marker, name = plugin_run
    plugin = work / "pixels.py"
    plugin.write_text(plugin.read_text() + "\n# changed after training\n")
    result = CliRunner().invoke(app, ["eval", str(run), "--trust-plugins"])
    assert result.exit_code == 2
    assert f"plugin file {plugin} changed since the run recorded it" in result.output
    assert not marker.exists()
    recorded = json.loads((run / "run.json").read_text())["plugins"]
    assert recorded == {"pixels.py": {"path": str(plugin), "sha256": hashlib.sha256(
        PLUGIN.format(name=name).encode()).hexdigest()}}  # fmt: skip
