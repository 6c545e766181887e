"""Writing an export folder atomically: everything goes to a temporary sibling that is renamed into place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

MARKER = "mmssl_export.json"
"""Every export folder holds this file; only a folder holding it is ever replaced by a new export."""


def write_folder(output: Path, fill: Callable[[Path], None], marker: str) -> Path:
    """Run ``fill(tmp)`` on an empty temporary folder next to ``output``, then rename it to ``output``.

    An existing ``output`` is replaced only when it holds ``marker`` (an earlier export of the same kind); an
    error inside ``fill`` leaves ``output`` as it was.

    Raises:
        FileExistsError: ``output`` is a non-empty folder that is not an earlier export.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / marker).exists())):
        raise FileExistsError(f"{output} exists and is not an earlier export ({marker} missing); choose a new folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        old = None
        if output.exists():
            old = output.with_name(f".{output.name}.old{os.getpid()}")
            os.replace(output, old)
        os.replace(tmp, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
