"""`mmssl train` under torchrun with two gloo processes on the CPU, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors.torch import load_file
from torchrun import run_two_processes

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "recipes" / "tiny_image_text.yaml"


def test_two_process_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = run_two_processes(
        ["-m", "mmssl.cli", "train", str(TINY), "train.steps=3", "--output", str(out), "--no-eval"]
    )
    assert code == 0, output

    assert (out / "model.safetensors").is_file(), output
    weights = load_file(str(out / "model.safetensors"))
    assert "projections.image.weight" in weights and "projections.text.weight" in weights

    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_0000003"
    last = checkpoints / "step_0000003"
    assert json.loads((last / "trainer.json").read_text()) == {"step": 3}
    # Each process saved its own RNG state: both ranks took part in one process group (not two rank-0 runs).
    assert sorted(p.name for p in last.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    assert not list(checkpoints.glob(".*.tmp"))

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by the main process
    for record in records:
        for key in ("loss", "clip/loss", "simclr/loss", "mae/loss", "mlm/loss"):
            assert math.isfinite(record[key]) and record[key] > 0, (key, record)
    assert not (out / "eval.json").exists()  # --no-eval


def test_two_process_lora_training_of_a_released_encoder(tmp_path: Path) -> None:
    """DDP with a released transformers encoder under LoRA: frozen weights stay put on both ranks, adapters train."""
    import sys

    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from released_text_models import make_tiny_bert
    from test_released_transformers import recipe

    bert = make_tiny_bert(tmp_path / "bert")
    tree = recipe(bert, train="lora", lora={"r": 2, "alpha": 4, "target_modules": ["query", "value"]})
    tree["train"]["steps"] = 3
    recipe_file = tmp_path / "lora.yaml"
    recipe_file.write_text(yaml.safe_dump(tree))
    out = tmp_path / "run"
    code, output = run_two_processes(["-m", "mmssl.cli", "train", str(recipe_file), "--output", str(out), "--no-eval"])
    assert code == 0, output
    weights = load_file(str(out / "model.safetensors"))
    released = load_file(str(bert / "model.safetensors"))
    frozen = [k for k in weights if ".base_layer." in k]
    assert frozen
    for key in frozen:
        name = key.removeprefix("encoders.text.model.").replace(".base_layer", "")
        assert name in released and (weights[key] == released[name]).all(), key
    assert any(weights[k].abs().sum() > 0 for k in weights if "lora_B" in k)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
