"""Launching two gloo processes on the CPU with torchrun, for the tests of distributed code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(args: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``torchrun --nproc_per_node 2 ARGS`` from the repository root.

    Args:
        args: A script path and its arguments, or ``["-m", module, ...]``.
        timeout: Seconds before the launch is killed (a process out of lock-step hangs in a collective).
        env: Extra environment variables.

    Returns:
        The exit code and the tail of stdout and stderr, for assertion messages.
    """
    extra = env or {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, f"stdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-5000:]}"
