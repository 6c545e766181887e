"""Shared helpers of the benchmarks: common arguments, thread setup, training steps, round-robin timing and
plain-text tables."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


def base_parser(description: str, steps: int, rounds_help: str) -> argparse.ArgumentParser:
    """The arguments every benchmark has: batch, rounds, steps, warmup, image and patch size, threads, seed."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help=rounds_help)
    p.add_argument("--steps", type=int, default=steps, help="Training steps per path per round.")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps per path before the first round.")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores).")
    p.add_argument("--seed", type=int, default=0)
    return p


def make_step(optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], float]:
    """One optimizer step of ``loss_fn``'s loss; returns the loss."""

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def setup_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: all cores) and return the count in use."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def describe_machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"torch {torch.__version__} | python {platform.python_version()} | {cpu} | "
        f"{os.cpu_count()} cores | torch threads {threads} | {load_average()}"
    )


def load_average() -> str:
    """The 1-minute load average: above the core count, other work competes for the CPU."""
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average n/a"


@dataclass
class TimedPath:
    """One way of running a training step; ``step()`` runs one full step (forward, loss, backward, update)."""

    name: str
    step: Callable[[], float]
    round_times: list[float] = field(default_factory=list)


def run_round_robin(
    paths: Sequence[TimedPath], warmup: int, rounds: int, steps: int, log: Callable[[str], None] = print
) -> None:
    """Warm every path up, then time ``rounds`` rounds of ``steps`` steps, alternating paths within a round.

    The order of the paths rotates from round to round, so no path always runs right after the same other one.
    Each round's wall time (seconds for ``steps`` steps) is appended to ``path.round_times``.
    """
    for path in paths:
        start = time.perf_counter()
        for _ in range(warmup):
            path.step()
        log(f"  warm-up {path.name}: {warmup} steps in {time.perf_counter() - start:.1f} s")
    for r in range(rounds):
        order = [paths[(i + r) % len(paths)] for i in range(len(paths))]
        parts = []
        for path in order:
            start = time.perf_counter()
            for _ in range(steps):
                path.step()
            elapsed = time.perf_counter() - start
            path.round_times.append(elapsed)
            parts.append(f"{path.name} {1000 * elapsed / steps:.0f} ms/step")
        log(f"  round {r + 1}/{rounds}: " + ", ".join(parts))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table: the first column left-aligned, the others right-aligned."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *[line(r) for r in cells[1:]]])


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
