"""Resumable checkpoints, written atomically.

A checkpoint is a folder ``checkpoints/step_XXXXXXX`` holding
``model.safetensors`` (every trained parameter: encoders, projections, objective heads),
``state.pt`` (optimizer and scheduler state, read back with ``weights_only=True``),
``rng_rank{R}.pt`` (each process's torch RNG state), ``trainer.json`` (the step) and ``manifest.json`` (size and
SHA-256 of each file, ``mmssl.train.integrity``).
It is written into a temporary folder and renamed into place, and ``checkpoints/latest`` is replaced
atomically afterwards, so a run killed at any moment (or a write failing on a full disk) leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmssl.train import integrity


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors as safetensors via a temporary file, so a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back; the previous file stays
        raise
    os.replace(tmp, path)


def save_weights(module: nn.Module, path: Path) -> None:
    """Write a module's state dict as safetensors, atomically."""
    save_tensors_atomic(dict(module.state_dict()), path)


def load_weights(module: nn.Module, path: Path, strict: bool = True) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} not found")
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise KeyError(f"{path}: missing keys {missing[:5]}..., unexpected keys {unexpected[:5]}...")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def staging_dir(root: Path, step: int) -> Path:
    return root / f".{checkpoint_name(step)}.tmp"


def begin_checkpoint(root: Path, step: int) -> Path:
    """Create an empty staging folder (main process only)."""
    tmp = staging_dir(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rng(tmp: Path, rank: int) -> None:
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")


def finish_checkpoint(
    root: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, keep: int
) -> Path:
    """Write weights and optimizer state into the staging folder, move it into place, prune old ones."""
    tmp = staging_dir(root, step)
    save_weights(module, tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "state.pt")
    (tmp / "trainer.json").write_text(json.dumps({"step": step}))
    integrity.write_manifest(tmp)
    final = root / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def discard_staging(root: Path, step: int) -> None:
    """Remove a half-written checkpoint (after a failed write, to give the disk space back)."""
    shutil.rmtree(staging_dir(root, step), ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders renamed into place, oldest first."""
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def resume_candidates(root: Path, step: int | None = None) -> list[Path]:
    """Checkpoints to try on ``--resume``, preferred first: ``latest``, then the others newest first.

    Args:
        root: The ``checkpoints`` folder.
        step: Only the checkpoint of this step (``--resume-step``); a ``FileNotFoundError`` lists the others.
    """
    found = complete_checkpoints(root)
    if step is not None:
        wanted = root / checkpoint_name(step)
        if wanted not in found:
            have = ", ".join(str(int(p.name.removeprefix("step_"))) for p in found) or "none"
            raise FileNotFoundError(f"--resume-step {step}: no checkpoint {wanted} (steps in {root}: {have})")
        return [wanted]
    first = latest_checkpoint(root)
    return ([first] if first else []) + [p for p in reversed(found) if p != first]


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if path.is_dir():
            return path
    found = sorted(p for p in root.glob("step_*") if p.is_dir())
    return found[-1] if found else None


def load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int) -> int:
    """Restore a checkpoint in place; returns its step. Never unpickles arbitrary objects.

    Every file is read before anything is restored; a damaged one raises ``integrity.CorruptCheckpointError``
    naming it.
    """
    weights = integrity.reading(path / "model.safetensors", lambda: load_file(str(path / "model.safetensors")))
    state = integrity.reading(path / "state.pt", lambda: torch.load(path / "state.pt", weights_only=True))
    rng_file = path / f"rng_rank{rank}.pt"
    rng = integrity.reading(rng_file, lambda: torch.load(rng_file, weights_only=True)) if rng_file.is_file() else None
    meta = path / "trainer.json"
    step = integrity.reading(meta, lambda: int(json.loads(meta.read_text())["step"]))
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise integrity.CorruptCheckpointError(
            path / "model.safetensors",
            f"it does not fit this recipe's model (missing keys {missing[:5]}, unexpected keys {unexpected[:5]})",
            "Was the recipe changed since the checkpoint was written? Resume with the run's own recipe.yaml.",
        )
    integrity.reading(path / "state.pt", lambda: optimizer.load_state_dict(state["optimizer"]))
    integrity.reading(path / "state.pt", lambda: scheduler.load_state_dict(state["scheduler"]))
    if rng is not None:
        set_rng_state(rng)
    return step
