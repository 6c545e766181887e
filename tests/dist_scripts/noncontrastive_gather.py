"""Two-process check of the full-batch statistics of Barlow Twins and VICReg, and of DINO's center (torchrun).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 noncontrastive_gather.py OUT_DIR``

Rank 0 holds 3 rows and rank 1 holds 5 rows of a fixed 8-row batch (unequal counts on purpose). Every rank
computes the loss with ``gather=True``, backpropagates, and the gradients are averaged over ranks (what DDP
does); the result must equal the single-process loss and gradient on the full batch. DINO's center update must
equal the one over all 8 rows. Rank 0 writes ``report.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from dist_common import exit_without_teardown
from torch import nn

from mmssl.objectives.noncontrastive import barlow_twins_loss, dino_center_update, vicreg_loss

ROWS = [3, 5]
TOL = 1e-5


def loss_of(name: str, za: torch.Tensor, zb: torch.Tensor, gather: bool) -> torch.Tensor:
    if name == "barlow_twins":
        return barlow_twins_loss(za, zb, 0.05, gather=gather)["loss"]
    return vicreg_loss(za, zb, 25.0, 25.0, 1.0, gather=gather)["loss"]


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    r, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    torch.manual_seed(0)
    xa, xb = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    lo, hi = sum(ROWS[:r]), sum(ROWS[: r + 1])
    report: dict = {"failures": []}
    for name in ("barlow_twins", "vicreg"):
        torch.manual_seed(1)
        net = nn.Linear(6, 5).double()
        loss = loss_of(name, net(xa[lo:hi]), net(xb[lo:hi]), gather=True)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in net.parameters()])
        dist.all_reduce(grad)
        grad /= world
        total = loss.detach().clone()
        dist.all_reduce(total)
        total /= world
        if r == 0:
            net.zero_grad()
            ref = loss_of(name, net(xa), net(xb), gather=False)
            ref.backward()
            ref_grad = torch.cat([p.grad.flatten() for p in net.parameters()])
            entry = {
                "loss_diff": float((total - ref).abs()),
                "grad_diff": float((grad - ref_grad).abs().max()),
                "grad_norm": float(ref_grad.norm()),
            }
            report[name] = entry
            if entry["loss_diff"] > TOL or entry["grad_diff"] > TOL:
                report["failures"].append(name)
    teacher = [torch.randn(8, 4, generator=torch.Generator().manual_seed(2 + i)) for i in range(2)]
    center = torch.full((1, 4), 0.5)
    mine = dino_center_update(center, [t[lo:hi] for t in teacher], 0.9)
    if r == 0:
        full = center * 0.9 + torch.cat(teacher).mean(0, keepdim=True) * 0.1  # no collective on one rank
        report["center_diff"] = float((mine - full).abs().max())
        if report["center_diff"] > 1e-6:
            report["failures"].append("dino_center")
        (out / "report.json").write_text(json.dumps(report, indent=2))
    dist.barrier()
    dist.destroy_process_group()
    if r == 0 and report["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    exit_without_teardown(main(Path(sys.argv[1])))
