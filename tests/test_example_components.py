"""The example package examples/plugin_components adds an objective, a data source and an encoder library to
mmssl without any change to mmssl/, through the one route every kind of component takes.

(a) Installed (``pip install --target``, offline, no build isolation) and put on a subprocess's path, its three
    entry points (``mmssl.objectives``, ``mmssl.sources``, ``mmssl.encoder_libraries``) are found, and
    ``mmssl train`` runs its recipe, which uses all three, then evaluates it.
(b) Not installed, the same three modules named as a recipe's ``plugins: [...]`` register and train too.
(c) The objective's loss is checked against an independent computation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tolerances import F32_SCALAR

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_components"
MODULES = EXAMPLE / "mmssl_components"
TIMEOUT = 300


def run(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


PLUGIN_FILES = [str(MODULES / f"{name}.py") for name in ("align_uniform", "stripes", "tinyconv")]


def workdir(folder: Path, plugins: list[str] | None = None) -> Path:
    """The example's recipe, shortened to 2 steps, in ``folder``; returns the recipe."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    if plugins is not None:
        tree["plugins"] = plugins
    tree["train"]["steps"] = 2
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree, sort_keys=False))
    return recipe


def test_installed_package_registers_all_three_and_trains(tmp_path: Path) -> None:
    source = shutil.copytree(EXAMPLE, tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    pip = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    run([*pip, "--target", str(site), str(source)], cwd=tmp_path, site=site)
    recipe = workdir(tmp_path / "work")
    out = tmp_path / "run"
    driver = (
        "import sys; from importlib.metadata import entry_points as eps; "
        "print(sorted(f'{g}:{e.name}' for g in ('mmssl.objectives', 'mmssl.sources', 'mmssl.encoder_libraries') "
        "for e in eps(group=g) if e.value.startswith('mmssl_components.'))); "
        f"from mmssl.cli import main; sys.argv = ['mmssl', 'train', {str(recipe)!r}, '-o', {str(out)!r}]; main()"
    )
    stdout = run(["-c", driver], cwd=tmp_path, site=site).stdout
    expected = "['mmssl.encoder_libraries:tinyconv', 'mmssl.objectives:align_uniform', 'mmssl.sources:stripes']"
    assert expected in stdout, stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("align_uniform/uniform" in r for r in records)
    results = json.loads((out / "eval.json").read_text())
    assert 0.0 <= results["knn_top1"] <= 1.0 and results["knn_chance"] == pytest.approx(1 / 3)


def test_plugin_files_register_all_three_without_installing(tmp_path: Path) -> None:
    from mmssl.compiler import compile_recipe
    from mmssl.train.trainer import train

    plan = compile_recipe(workdir(tmp_path / "work", plugins=PLUGIN_FILES))
    assert [kind.name for _, kind, _ in plan.objectives] == ["align_uniform"]
    assert plan.sources["train"][0].name == "stripes" and plan.libraries["image"].name == "tinyconv"
    assert plan.modality_options["image"].image_size == 16  # the image plugin adopted the encoder's input
    assert train(plan, tmp_path / "run").finished


def test_align_uniform_loss_matches_its_definition() -> None:
    from mmssl.objectives import OBJECTIVES
    from mmssl.plugins import load_plugin_file

    load_plugin_file(PLUGIN_FILES[0])  # idempotent: the module of a plugin file is imported once per process
    module = sys.modules[OBJECTIVES.get("align_uniform").build.__module__]
    g = torch.Generator().manual_seed(0)
    z_a, z_b = (F.normalize(torch.randn(6, 4, generator=g), dim=-1) for _ in range(2))
    out = module.align_uniform_loss(z_a, z_b, t=2.0, uniformity_weight=0.5)  # type: ignore[attr-defined]
    align = sum(float(((z_a[i] - z_b[i]) ** 2).sum()) for i in range(6)) / 6
    z = torch.cat([z_a, z_b]).tolist()
    pairs = [(i, j) for i in range(12) for j in range(i + 1, 12)]
    kernel = [torch.tensor(-2.0 * sum((a - b) ** 2 for a, b in zip(z[i], z[j], strict=True))).exp() for i, j in pairs]
    uniform = float(torch.stack(kernel).mean().log())
    assert float(out["align"]) == pytest.approx(align, **F32_SCALAR)
    assert float(out["loss"]) == pytest.approx(align + 0.5 * uniform, **F32_SCALAR)
