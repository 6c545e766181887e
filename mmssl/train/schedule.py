"""Learning-rate schedules as multipliers of the peak rate."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(
    schedule: str, total_steps: int, warmup_steps: int = 0, decay_fraction: float = 0.2, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """Return ``f(step) -> multiplier`` for ``torch.optim.lr_scheduler.LambdaLR``.

    Args:
        schedule: ``cosine`` (linear warmup, cosine decay to ``min_ratio``), ``wsd`` (warmup, stable at the peak,
            linear decay over the last ``decay_fraction`` of the steps) or ``constant`` (warmup, then flat).
        total_steps: Optimizer steps of the run.
        warmup_steps: Linear warmup from 0.
        decay_fraction: Share of steps spent decaying for ``wsd``.
        min_ratio: Final multiplier.
    """
    if schedule not in ("cosine", "wsd", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; valid: cosine, wsd, constant")

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            span = max(1, total_steps - warmup_steps)
            progress = min(1.0, (step - warmup_steps) / span)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_steps = max(1, round(total_steps * decay_fraction))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / decay_steps)
        return 1.0 - (1.0 - min_ratio) * progress

    return f
