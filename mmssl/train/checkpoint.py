"""Resumable checkpoints, written atomically.

A checkpoint is a folder ``checkpoints/step_XXXXXXX`` holding
``model.safetensors`` (every trained parameter: encoders, projections, objective heads),
``state.pt`` (optimizer and scheduler state, read back with ``weights_only=True``),
``rng_rank{R}.pt`` (each process's torch RNG state) and ``trainer.json`` (the step).
It is written into a temporary folder and renamed into place, and ``checkpoints/latest`` is replaced
atomically afterwards, so a run killed at any moment leaves the previous checkpoint intact.
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
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
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
    final = root / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if path.is_dir():
            return path
    found = sorted(p for p in root.glob("step_*") if p.is_dir())
    return found[-1] if found else None


def load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int) -> int:
    """Restore a checkpoint in place; returns its step. Never unpickles arbitrary objects."""
    load_weights(module, path / "model.safetensors")
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return int(json.loads((path / "trainer.json").read_text())["step"])
