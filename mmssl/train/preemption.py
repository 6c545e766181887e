"""Graceful stop on SIGTERM and SIGINT: finish the step, write a checkpoint on every process, leave with a known code.

SLURM preemption, spot-instance reclaims and Kubernetes eviction send SIGTERM (then SIGKILL after a grace period);
Ctrl-C sends SIGINT. The handler only records the signal; the training loop asks ``should_stop`` at each step
boundary, and under several processes all of them agree (a one-element all-reduce of the flag) so that every
process checkpoints the same step. A second SIGINT stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

STOPPED_EXIT_CODE = 75
"""Exit code of a run stopped by SIGTERM/SIGINT after writing its checkpoint (``EX_TEMPFAIL``: rerun with --resume)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Context manager that turns SIGTERM/SIGINT into a flag read at step boundaries.

    Args:
        announce: Called once with a line for the user when the first signal arrives.

    Outside the main thread (where Python cannot install handlers) it does nothing and the signals keep their
    default behaviour.
    """

    def __init__(self, announce: Callable[[str], None] = print) -> None:
        self.announce = announce
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal."""
        return self.signal_name is not None

    def agreed(self, accelerator: Any) -> str | None:
        """The stop signal's name when any process received one (the same answer on every process), else None.

        One all-reduce (max) of a one-element tensor per call under several processes; nothing otherwise.
        """
        number = signal.Signals[self.signal_name].value if self.signal_name else 0
        if accelerator.num_processes > 1:
            vote = torch.tensor([float(number)], device=accelerator.device)
            number = int(accelerator.reduce(vote, reduction="max").item())
        return signal.Signals(number).name if number else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait for the checkpoint
        if self.signal_name is None:
            self.signal_name = name
            self.announce(f"{name} received: stopping after this step and writing a checkpoint (Ctrl-C again to quit)")


def any_process(flag: bool, accelerator: Any) -> bool:
    """True on every process when ``flag`` is true on at least one (an all-reduce of one number).

    Args:
        flag: This process's vote.
        accelerator: An ``accelerate.Accelerator`` (anything with ``num_processes``, ``device`` and ``reduce``).
    """
    if accelerator.num_processes == 1:
        return flag
    vote = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(vote, reduction="sum").item() > 0)


def ignore_stop_signals() -> None:
    """For data-loader workers: the main process decides when to stop; a worker killed by Ctrl-C (sent to the whole
    process group) would make the main process fail instead of checkpointing."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
