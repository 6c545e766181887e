"""Two-process equivalence check for the gathered contrastive losses (run under torchrun).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 gather_equivalence.py OUT_DIR``

Every rank takes its slice of a fixed 8-row batch, computes each loss with ``gather=True``,
backpropagates, and averages gradients and losses over ranks (what DDP does). Rank 0 also
computes each loss with ``gather=False`` on the full batch in one process and compares.
As a negative control, the CLIP and InfoNCE losses are also run with a gradient-free gather
(what ``accelerator.gather`` does); their gradients must *differ* from the reference.
Rank 0 writes ``report.json`` to OUT_DIR and exits non-zero if a check fails.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_common import exit_without_teardown, publish_report
from torch import nn

from mmssl.objectives import distributed as dist_mod
from mmssl.objectives import functional as fn
from mmssl.objectives.distributed import gather_with_grad, rank, world_size

N_ROWS = 8
TOL = 1e-5
CONTROL_MIN_DIFF = 1e-4
#: Content ids of the b rows with duplicates (positives: identical) across the two processes' slices: rows 0, 2, 6
#: share one caption, rows 1 and 4 another.
DUPLICATE_IDS = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4])


class Towers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower_a = nn.Linear(6, 4)
        self.tower_b = nn.Linear(6, 4)
        self.clip_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.sig_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.sig_bias = nn.Parameter(torch.tensor(-2.0))


def compute_loss(
    model: Towers, name: str, xa: torch.Tensor, xb: torch.Tensor, gather: bool, rows: slice = slice(None)
) -> torch.Tensor:
    if name == "info_nce":  # two views through one shared encoder, as in SimCLR
        return fn.info_nce(model.tower_a(xa), model.tower_a(xb), temperature=0.2, gather=gather)["loss"]
    x = F.normalize(model.tower_a(xa), dim=-1)
    y = F.normalize(model.tower_b(xb), dim=-1)
    ids = (None, DUPLICATE_IDS[rows]) if name.endswith("_duplicates") else (None, None)
    if name.startswith("clip_loss"):
        return fn.clip_loss(x, y, model.clip_scale, gather=gather, ids=ids)["loss"]
    if name.startswith("siglip_loss"):
        return fn.siglip_loss(x, y, model.sig_scale, model.sig_bias, gather=gather, ids=ids)["loss"]
    raise ValueError(name)


def grads(model: Towers) -> dict[str, torch.Tensor]:
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def ddp_step(
    model: Towers, name: str, xa: torch.Tensor, xb: torch.Tensor, split: list[int] | None = None
) -> tuple[float, dict[str, torch.Tensor]]:
    """Local loss with gather=True, then mean all-reduce of loss and gradients (as DDP).

    ``split`` gives each rank's row count (unequal counts: partially paired data); default equal.
    """
    model.zero_grad(set_to_none=True)
    split = split or [N_ROWS // world_size()] * world_size()
    start = sum(split[: rank()])
    rows = slice(start, start + split[rank()])
    loss = compute_loss(model, name, xa[rows], xb[rows], gather=True, rows=rows)
    loss.backward()
    g = grads(model)
    for t in g.values():
        dist.all_reduce(t)
        t /= world_size()
    loss_t = loss.detach().clone()
    dist.all_reduce(loss_t)
    return (loss_t / world_size()).item(), g


def reference(model: Towers, name: str, xa: torch.Tensor, xb: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute_loss(model, name, xa, xb, gather=False)
    loss.backward()
    return loss.item(), grads(model)


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def gather_without_grad(x: torch.Tensor) -> torch.Tensor:
    """What ``accelerator.gather`` does: a plain all_gather whose result has no grad_fn."""
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out)


def main() -> int:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    # float64 so that only real mismatches (wrong labels, missing gradient paths), not
    # summation-order rounding, can approach the tolerance.
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = Towers()
    gen = torch.Generator().manual_seed(1)
    xa = torch.randn(N_ROWS, 6, generator=gen)
    xb = torch.randn(N_ROWS, 6, generator=gen)

    report: dict[str, object] = {"world_size": world_size(), "rank_ok": rank() == dist.get_rank()}
    n = N_ROWS // world_size()
    gathered = gather_with_grad(xa[rank() * n : (rank() + 1) * n])
    report["gather_order_diff"] = (gathered - xa).abs().max().item()

    failures: list[str] = []
    if report["world_size"] != 2 or not report["rank_ok"]:
        failures.append("world_size/rank")
    if report["gather_order_diff"] != 0.0:
        failures.append("gather order")

    for name in ("info_nce", "clip_loss", "siglip_loss", "clip_loss_duplicates", "siglip_loss_duplicates"):
        dist_loss, dist_grads = ddp_step(model, name, xa, xb)
        if rank() == 0:
            ref_loss, ref_grads = reference(model, name, xa, xb)
            entry = {
                "loss": ref_loss,
                "loss_diff": abs(dist_loss - ref_loss),
                "grad_diff": max_grad_diff(dist_grads, ref_grads),
                "grad_norm": math.sqrt(sum(float(g.pow(2).sum()) for g in ref_grads.values())),
            }
            report[name] = entry
            if not (entry["loss_diff"] < TOL and entry["grad_diff"] < TOL):
                failures.append(name)

    # Unequal row counts per process (partially paired rows): still the full-batch loss and gradient.
    uneven = [3, N_ROWS - 3] if world_size() == 2 else None
    for name in ("info_nce", "clip_loss", "siglip_loss", "clip_loss_duplicates", "siglip_loss_duplicates"):
        dist_loss, dist_grads = ddp_step(model, name, xa, xb, uneven)
        if rank() == 0:
            ref_loss, ref_grads = reference(model, name, xa, xb)
            entry = {"loss_diff": abs(dist_loss - ref_loss), "grad_diff": max_grad_diff(dist_grads, ref_grads)}
            report[f"uneven_{name}"] = entry
            if not (entry["loss_diff"] < TOL and entry["grad_diff"] < TOL):
                failures.append(f"uneven_{name}")

    # Negative control: a gradient-free gather gives the same loss but a wrong gradient.
    original = dist_mod.gather_with_grad
    dist_mod.gather_with_grad = gather_without_grad
    try:
        for name in ("info_nce", "clip_loss"):
            dist_loss, dist_grads = ddp_step(model, name, xa, xb)
            if rank() == 0:
                ref_loss, ref_grads = reference(model, name, xa, xb)
                entry = {
                    "loss_diff": abs(dist_loss - ref_loss),
                    "grad_diff": max_grad_diff(dist_grads, ref_grads),
                }
                report[f"nograd_control_{name}"] = entry
                if not (entry["loss_diff"] < TOL and entry["grad_diff"] > CONTROL_MIN_DIFF):
                    failures.append(f"nograd_control_{name}")
    finally:
        dist_mod.gather_with_grad = original

    return publish_report(out_dir, report, failures, rank() == 0)


if __name__ == "__main__":
    exit_without_teardown(main())
