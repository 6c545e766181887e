"""Shared ending of the two-process test scripts (imported from the script's own folder under torchrun)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch.distributed as dist


def publish_report(out_dir: Path, report: dict[str, Any], failures: list[str], is_main: bool) -> int:
    """Rank 0 writes and prints ``report.json``; every rank then leaves the process group. Returns the exit code."""
    if is_main:
        report["failures"] = failures
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


def exit_without_teardown(code: int | None) -> NoReturn:
    """Leave without interpreter teardown: gloo's threads can abort the process while C++ objects are destroyed
    ("terminate called without an active exception") after every check has already passed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
