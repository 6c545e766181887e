"""benchmarks/gpu_step.py runs on the CPU at a tiny size, so it cannot rot before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_step_benchmark_runs_tiny_on_cpu() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), "--tiny", "--device", "cpu", "--batch-size", "2",
           "--steps", "1", "--warmup", "0", "--configs", "plain,checkpointing,open_clip",
           "--peak-tflops", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["model"], r["activation_checkpointing"]) for r in rows] == [
        ("mmssl", False), ("mmssl", True), ("open_clip", False)
    ]  # fmt: skip
    plain, checkpointed, reference = rows
    # The same architecture in both libraries: the counted FLOPs of a step agree (attention and MLP dominate).
    assert abs(plain["step_tflops_per_process"] / reference["step_tflops_per_process"] - 1) < 0.02
    # Checkpointing recomputes the blocks' forward: more FLOPs, at most one more forward (a step is ~3 forwards).
    assert 1.0 < checkpointed["step_tflops_per_process"] / plain["step_tflops_per_process"] < 1.34
    for r in rows:
        assert r["samples_per_s"] > 0 and r["precision"] == "bf16" and 0 < r["mfu"] < 1
