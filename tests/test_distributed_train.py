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
