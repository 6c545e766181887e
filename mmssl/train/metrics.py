"""Metrics of training: averaged over each logging interval and all processes, to metrics.jsonl and the trackers
(``train.report_to``, through ``accelerator.log``)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class MetricLogger:
    """Accumulates named scalar terms and writes their means every ``flush``.

    Args:
        output: Run folder; writes ``metrics.jsonl``.
        enabled: Only the main process writes.
        resume_step: Lines after this step in an existing ``metrics.jsonl`` are dropped (a resumed run rewrites them).
    """

    def __init__(self, output: Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.path = output / "metrics.jsonl"
        if enabled:
            if self.path.exists():
                kept = [
                    line
                    for line in self.path.read_text().splitlines()
                    if json.loads(line).get("step", 0) <= resume_step
                ]
                self.path.write_text("".join(line + "\n" for line in kept))

    def state(self) -> dict[str, dict[str, float]]:
        """The sums of the interval not yet logged (a checkpoint keeps them, so a resumed run logs the same means)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state(self, state: dict[str, dict[str, float]]) -> None:
        self.sums.update(state.get("sums", {}))
        self.counts.update({k: int(v) for k, v in state.get("counts", {}).items()})

    def accumulate(self, terms: dict[str, Tensor]) -> None:
        for key, value in terms.items():
            self.sums[key] += float(value.detach().float().mean())
            self.counts[key] += 1

    def flush(self, step: int, accelerator: Any, extra: dict[str, float]) -> dict[str, float]:
        keys = sorted(self.sums)
        means = torch.tensor([self.sums[k] / self.counts[k] for k in keys], device=accelerator.device)
        means = accelerator.reduce(means, reduction="mean") if accelerator.num_processes > 1 else means
        record = {"step": step, **dict(zip(keys, means.tolist(), strict=True)), **extra}
        self.sums.clear()
        self.counts.clear()
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        return record

    def close(self) -> None:
        """Kept for callers; the trackers are closed by ``accelerator.end_training``."""
