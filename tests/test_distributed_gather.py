"""Two gloo processes on CPU: gathered losses + DDP-style averaging == full-batch single process."""

from __future__ import annotations

import json
from pathlib import Path

from torchrun import run_two_processes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "dist_scripts" / "gather_equivalence.py"
TOL = 1e-5


def test_gathered_losses_match_full_batch(tmp_path: Path) -> None:
    code, output = run_two_processes([str(SCRIPT), str(tmp_path)], timeout=180)
    assert code == 0, output

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == [], output
    assert report["world_size"] == 2 and report["rank_ok"], output
    assert report["gather_order_diff"] == 0.0, output
    for name in ("info_nce", "clip_loss", "siglip_loss", "clip_loss_duplicates", "siglip_loss_duplicates"):
        for entry in (report[name], report[f"uneven_{name}"]):
            assert entry["loss_diff"] < TOL, (name, output)
            assert entry["grad_diff"] < TOL, (name, output)
        assert report[name]["grad_norm"] > 1e-3, (name, output)  # the comparison is not vacuous
    # duplicates across the two processes' slices change the loss: the content ids were gathered and used
    for name in ("clip_loss", "siglip_loss"):
        assert abs(report[f"{name}_duplicates"]["loss"] - report[name]["loss"]) > 1e-3, (name, output)
    # a gradient-free gather (accelerator.gather) matches the loss but not the gradient
    for name in ("info_nce", "clip_loss"):
        entry = report[f"nograd_control_{name}"]
        assert entry["loss_diff"] < TOL, (name, output)
        assert entry["grad_diff"] > 1e-4, (name, output)
