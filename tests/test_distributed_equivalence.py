"""DDP, FSDP2 and GradCache on two gloo processes give the loss and gradients of one process on the full batch.

The checks run in ``dist_scripts/step_equivalence.py`` under torchrun; see its docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchrun import run_two_processes

SCRIPT = Path(__file__).resolve().parent / "dist_scripts" / "step_equivalence.py"


@pytest.mark.parametrize(
    ("part", "cases"),
    [
        ("strategies", [f"{k}/{s}" for k in ("clip", "simclr", "mae", "byol") for s in ("ddp", "fsdp")]),
        (
            "grad_cache",
            [f"{k}/grad_cache" for k in ("clip", "siglip", "simclr", "binding")] + ["clip/grad_cache/accum2"],
        ),
    ],
)
def test_two_processes_equal_one_process_on_the_full_batch(tmp_path: Path, part: str, cases: list[str]) -> None:
    code, output = run_two_processes([str(SCRIPT), str(tmp_path), part])
    assert code == 0, output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["failures"] == []
    assert sorted(k for k in report if "/" in k) == sorted(cases)
