"""The example third-party plugin (examples/plugin_spectra) works the two ways a plugin reaches mmssl.

(a) Installed from its own folder (``pip install --target``, no build isolation, offline) and put on the path of a
    subprocess, its ``mmssl.modalities`` entry point is found: ``importlib.metadata`` scans every ``sys.path``
    folder's ``*.dist-info``, so a ``--target`` install is seen like one in site-packages.
(b) In that subprocess ``mmssl modalities`` lists ``spectra``, ``mmssl train`` runs a tiny SimCLR + MAE recipe on
    synthetic spectra (Gaussian peaks at class-dependent positions; ``tests/synthetic_spectra.py``) and writes
    model.safetensors, and the registry-driven suite (``tests/test_objectives_on_plugins.py``) picks the new plugin
    up: its ``spectra`` row trains every objective that applies and rejects MLM.
(c) Without installing anything, the same file loaded by a recipe's ``plugins: [.../spectra.py]`` trains too.

Each route runs in its own process, so the plugin never lands in this process's registry. The plugin's processor
is also unit-tested here, imported straight from its file.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from synthetic_spectra import write_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_spectra"
PLUGIN_FILE = EXAMPLE / "mmssl_spectra" / "spectra.py"
TIMEOUT = 300


def run(args: list[str], cwd: Path, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def write_recipe(folder: Path, plugin_file: Path | None = None) -> Path:
    """A tiny SimCLR + MAE recipe on synthetic spectra (train 48 rows, test 24), with a k-NN evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder / "train", rows=48, seed=0)
    write_manifest(folder / "test", rows=24, seed=1)
    manifest = {"source": "manifest", "path_columns": ["spectrum"], "label_column": "label"}
    tree = {
        "name": "tiny_spectra",
        "seed": 0,
        "plugins": [str(plugin_file)] if plugin_file else [],
        "data": {
            "train": {**manifest, "path": "train/manifest.jsonl"},
            "test": {**manifest, "path": "test/manifest.jsonl"},
        },
        "modalities": {
            "spectra": {
                "column": "spectrum",
                "options": {"max_length": 128, "patch_len": 16, "width": 32, "depth": 1, "heads": 2},
            }
        },
        "model": {"embed_dim": 16},
        "objectives": [
            {"name": "simclr", "modality": "spectra", "proj_dim": 16, "hidden_dim": 32},
            {"name": "mae", "modality": "spectra", "mask_ratio": 0.5, "decoder_width": 16, "decoder_heads": 2},
        ],
        "train": {"steps": 2, "batch_size": 16, "log_every": 1, "num_workers": 0},
        "evaluations": [{"name": "knn", "modality": "spectra", "bank": "train", "query": "test", "k": 3}],
    }
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree, sort_keys=False))
    return recipe


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with pip from a copy of its folder (the build must not write into the repo)."""
    tmp = tmp_path_factory.mktemp("spectra_install")
    source = shutil.copytree(
        EXAMPLE, tmp / "plugin_spectra", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp / "site"
    pip = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    run([*pip, "--target", str(target), str(source)], cwd=tmp)
    assert (target / "mmssl_spectra" / "spectra.py").is_file()
    assert list(target.glob("mmssl_spectra-*.dist-info/entry_points.txt"))
    return target


CLI_DRIVER = """
import sys
from importlib.metadata import entry_points

from typer.testing import CliRunner

from mmssl.cli import app

print("entry points:", sorted(f"{ep.name}={ep.value}" for ep in entry_points(group="mmssl.modalities")))
for args in (["modalities"], ["train", *sys.argv[1:]]):
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    print(f"$ mmssl {' '.join(args)}\\n{result.output}")
    assert result.exit_code == 0, result.exit_code
"""


def test_installed_plugin_is_listed_and_trains(site: Path, tmp_path: Path) -> None:
    """(a) + (b) in one subprocess (each new process spends seconds importing torch and the plugins)."""
    recipe = write_recipe(tmp_path / "work")
    out = tmp_path / "run"
    stdout = run(["-c", CLI_DRIVER, str(recipe), "-o", str(out)], cwd=tmp_path, site=site).stdout
    assert "'spectra=mmssl_spectra:plugin'" in stdout, stdout
    line = next((x for x in stdout.splitlines() if x.startswith("spectra ")), None)
    assert line is not None and "views, masking (continuous), pairing" in line, stdout
    assert (out / "model.safetensors").is_file()
    assert (out / "processors" / "spectra" / "spectra.json").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"simclr/loss"' in lines[-1] and '"mae/loss"' in lines[-1]
    assert (out / "eval.json").is_file() and "knn" in (out / "eval.json").read_text(), stdout


def test_registry_driven_suite_picks_up_the_installed_plugin(site: Path, tmp_path: Path) -> None:
    suite = ROOT / "tests" / "test_objectives_on_plugins.py"
    args = ["-m", "pytest", str(suite), "-k", "spectra", "-v", "-p", "no:cacheprovider", "--basetemp", str(tmp_path)]
    out = run(args, cwd=ROOT, site=site).stdout
    for case in ("simclr", "mae", "byol", "data2vec"):
        assert f"test_objective_trains_on_plugin[spectra-{case}] PASSED" in out, out
    assert "test_objective_rejected_without_capability[spectra-mlm] PASSED" in out, out
    assert "test_every_plugin_has_a_data_fixture[spectra] PASSED" in out, out


def test_plugin_file_route_trains_without_installing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "work", plugin_file=PLUGIN_FILE)
    out = tmp_path / "run"
    code = (
        "import sys; from mmssl.plugins import all_modalities; from mmssl.cli import main; "
        "assert 'spectra' not in [p.name for p in all_modalities()], 'spectra is installed here'; "
        f"sys.argv = ['mmssl', 'train', {str(recipe)!r}, '-o', {str(out)!r}, '--no-eval']; main()"
    )
    run(["-c", code], cwd=tmp_path)
    assert (out / "model.safetensors").is_file()
    assert "plugins" in (out / "recipe.yaml").read_text()


# The processor itself, imported from the plugin file without registering it.


@pytest.fixture(scope="module")
def spectra() -> Iterator[ModuleType]:
    name = "spectra_example_under_test"
    spec = importlib.util.spec_from_file_location(name, PLUGIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the options' annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


def test_decode_npy_csv_and_arrays_agree(spectra: ModuleType, tmp_path: Path) -> None:
    y = np.linspace(0, 1, 40, dtype=np.float32) ** 2
    np.save(tmp_path / "a.npy", y)
    np.savetxt(tmp_path / "a.csv", np.stack([np.arange(40), y], 1), delimiter=",", header="x,y", comments="")
    np.savetxt(tmp_path / "a.txt", y)
    for raw in (y, y.tolist(), tmp_path / "a.npy", str(tmp_path / "a.csv"), tmp_path / "a.txt"):
        np.testing.assert_allclose(spectra.decode_spectrum(raw), y, rtol=1e-6)
    for bad in ([[1.0, 2.0], [3.0, 4.0]], [], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="1-D spectrum"):
            spectra.decode_spectrum(bad)
    with pytest.raises(ValueError, match=r"expected a \.npy"):
        spectra.decode_spectrum(tmp_path / "a.wav")


def test_views_collate_and_mask(spectra: ModuleType, tmp_path: Path) -> None:
    options = spectra.SpectraOptions(max_length=64, patch_len=8, width=16, depth=1, heads=2, crop_scale=(0.5, 0.9))
    corpus = [np.sin(np.arange(n, dtype=np.float32)) + 2 for n in (40, 64, 80)]
    proc = spectra.build_processor(options, corpus)
    assert proc.mean == pytest.approx(2.0, abs=0.1)
    samples = [proc.decode(raw) for raw in corpus]
    assert [len(proc.prepare(s)) for s in samples] == [40, 64, 64]  # cut to max_length
    a = proc.augment(samples[1], np.random.default_rng(3))
    assert torch.equal(a, proc.augment(samples[1], np.random.default_rng(3)))  # all randomness from rng
    assert 32 <= len(a) <= 58 and not torch.equal(a, proc.augment(samples[1], np.random.default_rng(4)))

    batch = proc.collate([proc.prepare(s) for s in samples])
    assert batch.data.shape == (3, 64) and batch.padding_mask.shape == (3, 8)
    assert batch.padding_mask.sum(1).tolist() == [3, 0, 0]  # 40 points: 5 tokens, the last one half padding
    masked = proc.mask(batch, 0.5, torch.Generator().manual_seed(0))
    assert masked.kind == "continuous" and masked.target.shape == (3, 8, 8)
    assert masked.batch.keep.shape == (3, 4)
    assert not (masked.mask & batch.padding_mask).any()  # padding is never scored
    assert masked.mask[1:].sum(1).tolist() == [4, 4]

    encoder = spectra.build_encoder(options, proc)
    full, visible = encoder(batch), encoder(masked.batch)
    assert full.tokens.shape == (3, 8, 16) and full.pooled.shape == (3, 16)
    assert visible.tokens.shape == (3, 4, 16)

    proc.save(tmp_path / "proc")
    again = spectra.load_processor(options, tmp_path / "proc")
    assert (again.mean, again.std) == (proc.mean, proc.std)
