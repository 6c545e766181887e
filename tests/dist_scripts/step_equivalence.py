"""Two processes (DDP, FSDP2, GradCache) against one process on the full batch (run under torchrun).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 step_equivalence.py OUT_DIR PART``, PART one of

- ``strategies``: DDP and FSDP for clip, simclr, mae and the EMA-teacher objective byol; then an SGD step and the
  EMA update, whose weights (the teacher's included) are compared too, so the update runs on sharded parameters;
- ``grad_cache``: contrastive_chunk over the gathered batch for clip, siglip, simclr and a binding pair, and
  gradient accumulation of two chunked micro-batches.

Each process first computes the single-process reference on the full 8-row batch, before the process group exists
(so gathers and the projector's global batch norm see one process), then joins the group and runs its 4-row
slice. Rank 0 compares the mean loss over ranks and the (averaged) gradients with the reference, within float32
rounding of each tensor's largest entries. Rank 0 writes ``report.json``; the exit code is non-zero on failure.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from dist_common import exit_without_teardown, publish_report
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_towers import build, grads, make_batch  # noqa: E402
from tolerances import F32, F32_SCALAR  # noqa: E402

from mmssl.train.grad_cache import GradCache, sync_gradients  # noqa: E402
from mmssl.train.sharding import shard  # noqa: E402

ROWS, LR, CHUNK = 8, 0.05, 3


def differences(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per parameter: largest |got - want| minus the allowed tolerance (> 0 is a failure).

    The rounding of a sum is bounded by the size of its terms, not of the result: a bias feeding a batch norm has
    an exact gradient of zero made of terms as large as its layer's weight gradient, so a bias is held to the
    scale of its sibling weight as well as its own.
    """
    out = {}
    for name, w in want.items():
        sibling = want.get(name.removesuffix("bias") + "weight") if name.endswith("bias") else None
        scale = max(1.0, float(w.abs().max()), float(sibling.abs().max()) if sibling is not None else 0.0)
        excess = (got[name] - w).abs() - (F32["atol"] * scale + F32["rtol"] * w.abs())
        out[name] = float(excess.max())
    return out


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (frozen EMA-teacher copies included) as a full tensor."""
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in module.named_parameters()
    }


def reference(kind: str, micro: int = 1) -> dict[str, Any]:
    """Loss and gradients of one process on the full batch, and its weights after an SGD step and EMA update."""
    module = build(kind)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=LR)
    losses = []
    for m in range(micro):
        terms = module(make_batch(kind, ROWS, seed=m))
        (terms["loss"] / micro).backward()
        losses.append(float(terms["loss"].detach()))
    out = {"loss": sum(losses) / micro, "grads": grads(module)}
    opt.step()
    module.after_optimizer_step(1, 2)
    return out | {"weights": weights(module)}


def distributed(kind: str, how: str, rank: int, world: int, micro: int = 1) -> dict[str, Any]:
    """The same on this process's rows, with DDP, FSDP2 or GradCache (DDP without hooks + one gradient sync)."""
    inner = build(kind)
    if how == "fsdp":
        module = shard(inner)
    else:
        module = DistributedDataParallel(inner, find_unused_parameters=True)  # simclr, mae, byol: no projection
    opt = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=LR)
    mine = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
    cache = GradCache(CHUNK, nullcontext, lambda loss: loss.backward())
    total = torch.zeros(())
    for m in range(micro):
        batch = make_batch(kind, ROWS, seed=m, part=mine)
        if how == "grad_cache":
            with module.no_sync():
                terms = cache.step(module, inner, batch, 1.0 / micro)
        else:
            terms = module(batch)
            (terms["loss"] / micro).backward()
        total += terms["loss"].detach() / micro
    if how == "grad_cache":
        sync_gradients(inner)
    dist.all_reduce(total)
    out = {"loss": float(total) / world, "grads": grads(inner)}
    opt.step()
    inner.after_optimizer_step(1, 2)
    return out | {"weights": weights(inner)}


def main() -> int:
    out_dir, part = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    if part == "strategies":
        cases = [(kind, how, 1) for kind in ("clip", "simclr", "mae", "byol") for how in ("ddp", "fsdp")]
    else:
        cases = [(kind, "grad_cache", 1) for kind in ("clip", "siglip", "simclr", "binding")]
        cases.append(("clip", "grad_cache", 2))
    refs = {(kind, micro): reference(kind, micro) for kind, _, micro in cases}
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    failures: list[str] = []
    report: dict[str, Any] = {"world_size": world, "part": part}
    for kind, how, micro in cases:
        got = distributed(kind, how, rank, world, micro)
        name = f"{kind}/{how}" + (f"/accum{micro}" if micro > 1 else "")
        if rank == 0:
            want = refs[(kind, micro)]
            entry: dict[str, Any] = {"loss": want["loss"], "loss_diff": abs(got["loss"] - want["loss"])}
            if entry["loss_diff"] > F32_SCALAR["rel"] * max(1.0, abs(want["loss"])):
                failures.append(f"{name} loss")
            for part_name in ("grads", "weights"):
                excess = differences(got[part_name], want[part_name])
                worst = max(excess, key=excess.get)
                entry[part_name] = {"worst": worst, "excess_over_tolerance": excess[worst]}
                if excess[worst] > 0:
                    failures.append(f"{name} {part_name} ({worst})")
            report[name] = entry
    return publish_report(out_dir, report, failures, rank == 0)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    exit_without_teardown(main())
