"""Errors a person can fix, and how the command line shows them: one message naming the file and what to do.

The traceback is shown only with ``mmssl --debug`` or ``MMSSL_DEBUG=1``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """An error caused by the input or the machine, not by mmssl: shown as its message and ``hint``, no traceback.

    Args:
        message: What went wrong, naming the file, key or folder.
        hint: What to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


def debug_enabled() -> bool:
    """True when ``MMSSL_DEBUG`` is set to something other than ``0``/``false``/empty."""
    return os.environ.get("MMSSL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


NO_SPACE_MARKERS = ("no space left on device", "storagefull", "file write failed", "unexpected pos")
"""How a full disk shows in errors that lost their errno: safetensors (Rust ``StorageFull``) and torch.save's
zip writer (``PytorchStreamWriter failed writing file``, ``[enforce fail at inline_container.cc] unexpected pos``)."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception in its chain) says the disk or quota is full."""
    for item in causes(err):
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(item).lower() for marker in NO_SPACE_MARKERS):
            return True
    return False


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


OPTIONAL_PACKAGES = {
    "open_clip": "open-clip-torch",
    "torch_geometric": "torch-geometric",
    "sklearn": "scikit-learn",
    "sktime": "mmssl[timeseries]",
    "pandas": "mmssl[timeseries]",
    "pyarrow": "mmssl[timeseries]",
    "rdkit": "mmssl[graph]",
}
"""Import name -> what to ``pip install`` where the two differ."""

DEBUG_HINT = "Run with --debug (or MMSSL_DEBUG=1) for the traceback."


def _message(err: BaseException) -> str:
    """The message of ``err``, without the worker traceback a DataLoader worker's exception carries along."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].strip()
    return text or type(err).__name__


def explain(err: BaseException) -> tuple[str, str | None, int]:
    """``(message, hint, exit code)`` for an error that reached the command line."""
    from mmssl.plugins import PluginError
    from mmssl.recipe import RecipeError

    if isinstance(err, UserError):
        return err.message, err.hint, err.exit_code
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        return f"missing package {top!r}: {err}", f"Install it: pip install '{OPTIONAL_PACKAGES.get(top, top)}'", 1
    if is_disk_full(err):
        file = next((c.filename for c in causes(err) if isinstance(c, OSError) and c.filename), None)
        where = Path(file).parent if file else Path.cwd()
        free = shutil.disk_usage(where).free if where.exists() else 0
        return (
            f"no space left on device writing {file or 'a file'} ({human_bytes(free)} free in {where})",
            "Free some space, then rerun (a stopped training run continues with --resume).",
            1,
        )
    if isinstance(err, FileNotFoundError | IsADirectoryError | PermissionError):
        message = str(err) if not err.filename else f"{err.strerror or 'cannot open'}: {err.filename}"
        return message, "Check the path; paths in a recipe are relative to the recipe's folder.", 1
    if isinstance(err, PluginError):
        return str(err), f"Fix the plugin or remove it from the recipe's `plugins`. {DEBUG_HINT}", 1
    if isinstance(err, RecipeError):
        missing = re.search(r"No module named '([\w.]+)'", str(err))
        if missing:
            top = missing.group(1).split(".")[0]
            return str(err), f"Install the missing package: pip install '{OPTIONAL_PACKAGES.get(top, top)}'", 2
        return str(err), "`mmssl validate RECIPE` checks a recipe without running it.", 2
    text = _message(err)
    if "Original Traceback" in str(err) or isinstance(err, ValueError):  # our ValueErrors are written for people
        return text, DEBUG_HINT, 1
    return f"{type(err).__name__}: {text}", DEBUG_HINT, 1


def report(err: BaseException) -> int:
    """Print ``err`` for a person (one message and a hint, in red and dim) on stderr; return the exit code."""
    from rich.console import Console
    from rich.markup import escape

    message, hint, code = explain(err)
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]{escape(prefix)}error:[/] {escape(message)}")
    if hint:
        console.print(f"[dim]{escape(hint)}[/]")
    return code
