"""Checkpoint integrity: a checksum manifest written with each checkpoint, checked before resuming; falling back to
the previous complete checkpoint when the latest is damaged; a failed write explained (disk full) with the previous
checkpoint left intact.

``manifest.json`` lists every file of a checkpoint folder with its size and SHA-256. It is written last, after the
files are flushed to disk, and before the folder is renamed into place, so a checkpoint whose files were truncated,
overwritten or replaced (a poisoned ``state.pt``) no longer matches it. Checkpoints without a manifest (older runs)
are accepted as they are and guarded only by the loaders (safetensors, ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from mmssl.errors import UserError, human_bytes, is_disk_full

MANIFEST = "manifest.json"


class CorruptCheckpointError(UserError):
    """A checkpoint file is missing, truncated, altered or unreadable.

    Args:
        file: The damaged file (or the checkpoint folder).
        reason: What is wrong with it.
    """

    def __init__(self, file: Path, reason: str, hint: str | None = None) -> None:
        super().__init__(f"checkpoint file {file} is corrupt: {reason}", hint)
        self.file = file
        self.reason = reason


class NoIntactCheckpointError(UserError):
    """Every checkpoint of a run is damaged."""


class CheckpointWriteError(UserError):
    """Writing a checkpoint failed; the previous checkpoint is untouched."""


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        os.fsync(handle.fileno())  # on disk before the folder is renamed into place (a node can lose power)
    return digest


def write_manifest(folder: Path) -> None:
    """Record size and SHA-256 of every file in ``folder`` in ``folder/manifest.json`` (flushing the files)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in files}
    tmp = folder / f".{MANIFEST}.tmp"
    with tmp.open("w") as handle:
        json.dump({"format": 1, "files": entries}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def verify(folder: Path) -> None:
    """Raise ``CorruptCheckpointError`` naming the first file of ``folder`` that does not match its manifest."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return  # written before manifests existed: the loaders are the only guard
    try:
        entries = json.loads(manifest.read_text())["files"]
        entries = {str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpointError(manifest, f"unreadable manifest ({type(err).__name__}: {err})") from err
    for name, (size, sha) in sorted(entries.items()):
        file = folder / name
        if not file.is_file():
            raise CorruptCheckpointError(file, "the file is missing")
        actual = file.stat().st_size
        if actual != size:
            raise CorruptCheckpointError(file, f"{actual} bytes where {size} were written (truncated or replaced)")
        if _digest(file) != sha:
            raise CorruptCheckpointError(file, "its contents changed after it was written (SHA-256 mismatch)")


def reading(file: Path, read: Callable[[], Any]) -> Any:
    """Run ``read`` and turn any failure into a ``CorruptCheckpointError`` naming ``file``."""
    try:
        return read()
    except FileNotFoundError as err:
        raise CorruptCheckpointError(file, "the file is missing") from err
    except Exception as err:  # safetensors, torch's weights_only unpickler and json each raise their own types
        text = str(err).strip()
        if "weights only load failed" in text.lower():
            reason = "it holds pickled objects other than tensors (refused: loading it could run code)"
        else:
            reason = f"{type(err).__name__}: {text.splitlines()[0] if text else 'unreadable'}"
        raise CorruptCheckpointError(file, reason) from err


def resume_from(
    candidates: Iterable[Path],
    load: Callable[[Path], int],
    agree: Callable[[bool], bool],
    check_here: bool,
    warn: Callable[[str], None],
) -> tuple[Path, int]:
    """Load the newest checkpoint that is intact on every process.

    Args:
        candidates: Checkpoint folders, preferred first (``checkpoint.resume_candidates``).
        load: Restores one checkpoint into the training state and returns its step; raises
            ``CorruptCheckpointError`` on a damaged file.
        agree: ``any_process``: true everywhere when a process voted true (all processes fall back together).
        check_here: Verify manifests on this process (the main one; the others only load).
        warn: Shows a warning line.

    Returns:
        The folder resumed from and its step.
    """
    candidates = list(candidates)
    failures: list[str] = []
    for position, folder in enumerate(candidates):
        failure: CorruptCheckpointError | None = None
        step = -1
        try:
            if check_here:
                verify(folder)
            step = load(folder)
        except CorruptCheckpointError as err:
            failure = err
        if not agree(failure is not None):
            return folder, step
        rest = candidates[position + 1 :]
        reason = failure.message if failure is not None else f"checkpoint {folder} is corrupt on another process"
        failures.append(reason)
        warn(reason + (f"; falling back to the previous complete checkpoint {rest[0]}" if rest else ""))
    root = candidates[-1].parent if candidates else Path("checkpoints")
    raise NoIntactCheckpointError(
        f"no intact checkpoint to resume from in {root}:\n  " + "\n  ".join(failures or ["no checkpoint"]),
        "Start a new run with another --output, or restore the checkpoints folder from a backup.",
    )


def state_bytes(*states: Any) -> int:
    """Bytes of the tensors in nested dicts/lists (a state dict, an optimizer's state): a checkpoint's size."""
    total = 0
    stack = list(states)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def checkpoint_bytes(previous: Path | None, *states: Any) -> int:
    """Bytes one checkpoint needs: the previous one's size on disk, or the tensors of ``states`` when larger."""
    on_disk = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file()) if previous else 0
    return max(on_disk, state_bytes(*states))


def write_failure(err: BaseException, root: Path, name: str, needed: int, previous: Path | None) -> UserError:
    """The error to raise after writing checkpoint ``name`` into ``root`` failed with ``err``.

    Args:
        err: What the writer raised.
        root: The checkpoints folder.
        name: The checkpoint being written (``step_0000080``).
        needed: Estimated bytes of one checkpoint.
        previous: The newest complete checkpoint, which the failed write left alone.
    """
    kept = f"The previous checkpoint {previous} is intact." if previous else "There is no previous checkpoint."
    free = shutil.disk_usage(root).free if root.exists() else 0
    # torch.save's writer does not always keep the errno ("basic_ios::clear: iostream error"): compare sizes too.
    if is_disk_full(err) or free < needed:
        return CheckpointWriteError(
            f"no space left on device while writing checkpoint {name} in {root}: it needs about "
            f"{human_bytes(needed)}, {human_bytes(free)} free there. {kept}",
            "Free some space (or lower train.keep_checkpoints), then continue with --resume.",
        )
    return CheckpointWriteError(
        f"could not write checkpoint {name} in {root}: {type(err).__name__}: {err}. {kept}",
        "Fix the cause, then continue with --resume.",
    )
