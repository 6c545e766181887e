"""Sharded checkpoints (``train.strategy: fsdp``) with ``torch.distributed.checkpoint`` (DCP), and loading any
checkpoint into any strategy and process count.

A sharded checkpoint is a folder ``checkpoints/step_XXXXXXX`` holding ``sharded/`` (DCP: ``.metadata`` and one
``__R_0.distcp`` file per writing process, with the model and optimizer state under fully qualified parameter
names), ``scheduler.pt``, ``rng_rank{R}.pt`` and ``trainer.json``; it is staged in a temporary folder and renamed
into place like the replicated (DDP) checkpoints of ``mmssl.train.checkpoint``.

DCP stores each tensor with its global shape, so a checkpoint written by 2 processes loads into 1 process, into
3, into a DDP run or into a single process, and a replicated checkpoint (``model.safetensors`` + ``state.pt``)
loads into an FSDP run: :func:`load_any` handles all four directions.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mmssl.train import checkpoint as ckpt
from mmssl.train import integrity

SHARDED = "sharded"


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / SHARDED / ".metadata").is_file()


def save_sharded(
    root: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, keep: int, rank: int
) -> None:
    """Write a sharded checkpoint of step ``step``; every process calls this (collective).

    The main process (``rank`` 0) must have made the staging folder (``checkpoint.begin_checkpoint``) and every
    process must have passed a barrier since.
    """
    import torch.distributed as dist

    tmp = ckpt.staging_dir(root, step)
    state = {"model": get_model_state_dict(module), "optimizer": get_optimizer_state_dict(module, optimizer)}
    dcp.save(state, checkpoint_id=str(tmp / SHARDED))
    ckpt.write_rng(tmp, rank)
    dist.barrier()
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict()}, tmp / "scheduler.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step}))
        integrity.write_manifest(tmp)  # sizes and hashes of every file, shards included, checked on resume
        final = root / ckpt.checkpoint_name(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpt.atomic_write_text(root / "latest", final.name)
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def load_any(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int) -> int:
    """Restore a sharded or replicated checkpoint into ``module`` (sharded with FSDP2 or not) and its optimizer;
    returns the step. Every process calls this.

    Args:
        path: A checkpoint folder.
        module: The unwrapped training module (an FSDP module, the module inside DDP, or a plain module).
        optimizer: Its optimizer (built over ``module``'s parameters).
        scheduler: The LR scheduler.
        rank: This process's index (which RNG file to restore; a process beyond the writers' count keeps its own).
    """
    path = Path(path)
    if is_sharded_checkpoint(path):
        state = {"model": get_model_state_dict(module), "optimizer": get_optimizer_state_dict(module, optimizer)}
        dcp.load(state, checkpoint_id=str(path / SHARDED))
        set_model_state_dict(module, state["model"])
        set_optimizer_state_dict(module, optimizer, state["optimizer"])
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True)["scheduler"])
    else:
        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(module, load_file(str(path / "model.safetensors")), options=full)
        saved = torch.load(path / "state.pt", weights_only=True)
        set_optimizer_state_dict(module, optimizer, by_name(saved["optimizer"], module, optimizer), options=full)
        scheduler.load_state_dict(saved["scheduler"])
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        ckpt.set_rng_state(torch.load(rng_file, weights_only=True))
    return int(json.loads((path / "trainer.json").read_text())["step"])


def by_name(saved: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An ``optimizer.state_dict()`` (parameters numbered in group order) keyed by parameter name instead.

    The numbering is that of an optimizer built the same way over the same module (``build_optimizer``), which
    ``optimizer`` is; sharding keeps parameter names and order.
    """
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    numbered = [i for group in saved["param_groups"] for i in group["params"]]
    if len(numbered) != len(order):
        raise ValueError(f"the checkpoint's optimizer has {len(numbered)} parameters, this run's {len(order)}")
    name_of = dict(zip(numbered, order, strict=True))
    return {
        "state": {name_of[i]: s for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [name_of[i] for i in g["params"]]} for g in saved["param_groups"]],
    }


def check_global_batch(meta: dict[str, Any], global_batch: int, where: str) -> None:
    """A resumed run (perhaps under another process count) must keep the global batch its run recorded.

    Raises:
        ValueError: ``batch_size x processes x grad_accum`` differs from the recorded ``global_batch``.
    """
    recorded = meta.get("global_batch")
    if recorded is not None and recorded != global_batch:
        raise ValueError(
            f"--resume: {where} was trained with a global batch of {recorded} rows (train.batch_size x processes x "
            f"train.grad_accum), this launch makes {global_batch}; set train.batch_size so that the product stays "
            f"{recorded}"
        )


def full_model_state(module: nn.Module) -> dict[str, Tensor]:
    """The whole (unsharded) state dict on every process, on the CPU; collective under FSDP."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def checkpoint_tensors(path: Path) -> dict[str, Tensor]:
    """Every model tensor of a checkpoint folder, sharded or not, read in one process (export, eval).

    A sharded checkpoint is read through its DCP metadata: each tensor is allocated at its global shape and
    filled from all the shard files.
    """
    path = Path(path)
    if not is_sharded_checkpoint(path):
        return load_file(str(path / "model.safetensors"))
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(path / SHARDED))
    metadata = reader.read_metadata()
    template = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    dcp.load(template, storage_reader=reader, no_dist=True)
    return {key.removeprefix("model."): value for key, value in template.items()}
