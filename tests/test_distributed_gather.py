"""Two gloo processes on CPU: gathered losses + DDP-style averaging == full-batch single process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "dist_scripts" / "gather_equivalence.py"
TOL = 1e-5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_losses_match_full_batch(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == [], output
    assert report["world_size"] == 2 and report["rank_ok"], output
    assert report["gather_order_diff"] == 0.0, output
    for name in ("info_nce", "clip_loss", "siglip_loss"):
        entry = report[name]
        assert entry["loss_diff"] < TOL, (name, output)
        assert entry["grad_diff"] < TOL, (name, output)
        assert entry["grad_norm"] > 1e-3, (name, output)  # the comparison is not vacuous
    # a gradient-free gather (accelerator.gather) matches the loss but not the gradient
    for name in ("info_nce", "clip_loss"):
        entry = report[f"nograd_control_{name}"]
        assert entry["loss_diff"] < TOL, (name, output)
        assert entry["grad_diff"] > 1e-4, (name, output)
