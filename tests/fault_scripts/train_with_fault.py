"""``mmssl`` with one fault injected, for tests/test_faults.py; the fault comes from ``MMSSL_TEST_FAULT``:

- ``kill_in_checkpoint:STEP``: while writing checkpoint STEP, write half of ``state.pt`` and SIGKILL this process.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import torch

from mmssl.cli import app
from mmssl.train import checkpoint


def kill_in_checkpoint(step: int) -> None:
    real_save = torch.save
    staging = f".{checkpoint.checkpoint_name(step)}.tmp"

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(f, str | Path) and Path(f).parent.name == staging and Path(f).name == "state.pt":
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as handle:
                handle.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    kind, _, arg = os.environ.get("MMSSL_TEST_FAULT", "").partition(":")
    if kind == "kill_in_checkpoint":
        kill_in_checkpoint(int(arg))
    elif kind:
        raise SystemExit(f"unknown MMSSL_TEST_FAULT {kind!r}")
    app(prog_name="mmssl")
