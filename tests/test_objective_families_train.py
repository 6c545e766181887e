"""Every non-contrastive objective trains through the real trainer on tiny Fashion-MNIST recipes, and runs with an
EMA teacher (and the monitors on) resume bit-identically: teacher weights, DINO's center and step counters are in the
checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mmssl.build import Plan
from mmssl.compiler import compile_recipe
from mmssl.train.trainer import train

IMAGE = {
    "image_size": 28, "patch_size": 7, "channels": 1, "width": 32, "depth": 1, "heads": 2, "stats_samples": 128,
    "encoder": "vit",  # the smallest encoder with blocks for data2vec to read (the family recipes use the ResNet)
}
TEXT = {"vocab_size": 64, "max_length": 12, "width": 32, "depth": 2, "heads": 2, "dropout": 0.1}


def tiny_plan(objectives: list[dict[str, Any]], text: bool = False, **train_options: Any) -> Plan:
    tree: dict[str, Any] = {
        "name": "families",
        "seed": 2,
        "data": {"train": {"source": "fashion_mnist", "split": "train", "limit": 128}},
        "modalities": {"image": {"options": IMAGE}},
        "model": {"embed_dim": 16},
        "objectives": objectives,
        "train": {"steps": 3, "batch_size": 16, "log_every": 1, **train_options},
    }
    if text:
        tree["modalities"]["text"] = {"column": "caption", "options": TEXT}
    return compile_recipe(tree)


def records(run: Path) -> dict[int, dict[str, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines]
    assert len(steps) == len(set(steps)), steps
    return {r["step"]: r for r in lines}


BYOL = {"name": "byol", "modality": "image", "proj_dim": 16, "hidden_dim": 32, "pred_hidden_dim": 32}
DINO = {"name": "dino", "modality": "image", "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_views": 3}
DATA2VEC = {"name": "data2vec", "modality": "image", "decoder_width": 16, "decoder_heads": 2, "num_masks": 2}
CASES = {
    "barlow_twins": ([{"name": "barlow_twins", "modality": "image", "proj_dim": 64, "hidden_dim": 64}], False),
    "vicreg": ([{"name": "vicreg", "modality": "image", "proj_dim": 64, "hidden_dim": 64}], False),
    "byol": ([BYOL], False),
    "dino": ([DINO], False),
    "data2vec": ([DATA2VEC], False),
    "data2vec_text": (
        [{"name": "data2vec", "modality": "text", "decoder_width": 16, "decoder_heads": 2, "mask_ratio": 0.3}],
        True,
    ),
}
TERMS = {
    "barlow_twins": ["on_diag", "off_diag"],
    "vicreg": ["invariance", "variance", "covariance"],
    "byol": ["cos", "momentum"],
    "dino": ["teacher_entropy", "teacher_temp"],
    "data2vec": ["cos", "momentum"],
    "data2vec_text": ["cos"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_objective_trains_three_steps(case: str, tmp_path: Path) -> None:
    objectives, text = CASES[case]
    result = train(tiny_plan(objectives, text=text, monitor_every=3, monitor_rows=64), tmp_path / case)
    assert result.finished and result.step == 3
    found = records(tmp_path / case)
    assert sorted(found) == [1, 2, 3]
    label = objectives[0]["name"]
    for record in found.values():
        assert math.isfinite(record["loss"]) and math.isfinite(record[f"{label}/loss"])
        for term in TERMS[case]:
            assert math.isfinite(record[f"{label}/{term}"]), term
    modality = objectives[0]["modality"]
    assert math.isfinite(found[3][f"monitor/{modality}/rankme"])
    if text:
        assert "monitor/image+text/alignment" in found[3]  # paired modalities, shared space


def test_teacher_runs_resume_bit_identically(tmp_path: Path) -> None:
    """BYOL + DINO + data2vec together for 6 steps, stopped after the step-4 checkpoint and resumed."""
    plan = tiny_plan([BYOL, DINO, DATA2VEC], steps=6, checkpoint_every=2, monitor_every=2, monitor_rows=32)
    run_a = tmp_path / "a"
    train(plan, run_a)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copytree(run_a / "processors", stopped / "processors")  # run A's setup: the same tokenizer
    for name in ("labels.json", "recipe.yaml", "run.json"):
        shutil.copy(run_a / name, stopped / name)
    assert not train(plan, stopped, resume=True, stop_after=4).finished  # a setup without checkpoint: from step 0
    run_b = shutil.copytree(stopped, tmp_path / "b")
    assert train(plan, run_b, resume=True).finished

    last = Path("checkpoints") / "step_0000006" / "model.safetensors"
    a, b = load_file(str(run_a / last)), load_file(str(run_b / last))
    teacher_keys = [k for k in a if ".teacher." in k]
    for label in ("byol", "dino", "data2vec"):
        assert any(k.startswith(f"objectives.{label}.teacher.encoder.") for k in teacher_keys), label
    assert "objectives.dino.center" in a and int(a["objectives.dino.teacher.steps"]) == 6
    assert sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # The teacher has moved away from its initial copy but is not the student.
    enc = "transformer.blocks.0.attn.qkv.weight"
    student, teacher = a[f"model.encoders.image.{enc}"], a[f"objectives.byol.teacher.encoder.{enc}"]
    assert not torch.equal(student, teacher)
    ra, rb = records(run_a), records(run_b)
    for step in (5, 6):
        assert {k: v for k, v in rb[step].items() if k != "samples_per_s"} == {
            k: v for k, v in ra[step].items() if k != "samples_per_s"
        }
    assert "monitor/image/rankme" in rb[6] and "monitor/image/rankme" not in rb[5]
