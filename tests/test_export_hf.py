"""hf and safetensors export: a LoRA-adapted tiny BERT loads with plain transformers, without mmssl, and embeds
exactly as mmssl does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from released_text_models import make_tiny_bert
from safetensors.torch import load_file
from test_released_transformers import TEXTS, recipe
from typer.testing import CliRunner

from mmssl.cli import app
from mmssl.compiler import compile_recipe

CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    folder, result, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    assert "mmssl" not in sys.modules and "peft" not in sys.modules
    save_file({"pooled": ((hidden * mask).sum(1) / mask.sum(1)).contiguous()}, result)
    """
)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmssl.train.trainer import train

    root = tmp_path_factory.mktemp("hf_export")
    bert = make_tiny_bert(root / "bert")
    tree = recipe(bert, train="lora", lora={"r": 2, "alpha": 4, "target_modules": ["query", "value"]})
    plan = compile_recipe(tree, base_dir=root)
    assert train(plan, root / "run").finished
    return root / "run"


def mmssl_pooled(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from mmssl.run import load_run

    run = load_run(run_dir)
    proc = run.processors["text"]
    with torch.no_grad():
        out = run.model.encoders["text"](proc.collate([proc.prepare(t) for t in TEXTS]))
        projected = run.model.embed("text", proc.collate([proc.prepare(t) for t in TEXTS]))
    return out.pooled, projected


def test_hf_export_loads_in_plain_transformers_and_matches(lora_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(lora_run), "--format", "hf", "--output", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "hf"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "mmssl_projection.safetensors"} <= names
    weights = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in weights), "LoRA must be merged away"
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "LoRA adapters, merged" in card and "fashion_mnist" in card
    assert "max_length=32" in card  # the length the run tokenized with (the recipe's 128, capped by the model)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = [sys.executable, "-c", CHILD, str(out), str(tmp_path / "child.safetensors"), *TEXTS]
    done = subprocess.run(child, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = load_file(str(tmp_path / "child.safetensors"))["pooled"]
    ours, projected = mmssl_pooled(lora_run)
    diff = (theirs - ours).abs().max().item()
    print(f"hf export vs mmssl pooled: max abs diff {diff:.3g}")
    assert diff < 1e-5
    # The exported projection maps the pooled embedding into the run's shared space.
    projection = load_file(str(out / "mmssl_projection.safetensors"))["weight"]
    assert torch.allclose(torch.nn.functional.normalize(theirs @ projection.T, dim=-1), projected, atol=1e-5)


def test_lora_changed_the_exported_weights(lora_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    from mmssl.export.hf import export_hf

    out = export_hf(lora_run, tmp_path / "hf")
    recipe_file = json.loads((out / "mmssl_export.json").read_text())
    assert recipe_file["modality"] == "text" and recipe_file["pooling"] == "mean"
    released = AutoModel.from_pretrained(lora_run.parent / "bert").state_dict()
    exported = AutoModel.from_pretrained(out).state_dict()
    changed = [k for k in released if not torch.equal(released[k], exported[k])]
    assert changed and all(("query" in k or "value" in k) and k.endswith("weight") for k in changed)


def test_safetensors_export_has_merged_weights_processors_and_card(lora_run: Path, tmp_path: Path) -> None:
    from mmssl.export.safetensors_export import export_safetensors

    out = export_safetensors(lora_run, tmp_path / "st")
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("encoders.text.") for k in weights) and "projections.text.weight" in weights
    assert not any("lora" in k for k in weights)
    config = json.loads((out / "config.json").read_text())
    assert config["modalities"]["text"]["encoder"]["library"] == "transformers"
    assert config["preprocessing"]["text"]["input"] == "tokens"
    assert (out / "processors" / "text").is_dir() and (out / "README.md").is_file()


def test_export_errors_are_clear_and_leave_the_output_alone(lora_run: Path, tmp_path: Path) -> None:
    from mmssl.export.hf import export_hf

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier export"):
        export_hf(lora_run, taken)
    assert (taken / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="--modality 'image' is not in the run"):
        export_hf(lora_run, tmp_path / "x", modality="image")
    result = CliRunner().invoke(app, ["export", str(lora_run), "--format", "onnx", "--output", str(tmp_path / "y")])
    assert result.exit_code == 2 and "valid choices: hf, open_clip, safetensors" in result.output
    own = Path(__file__).parent / "recipes"
    result = CliRunner().invoke(app, ["export", str(own), "--format", "hf", "--output", str(tmp_path / "z")])
    assert result.exit_code == 2 and "not an mmssl run folder" in result.output
