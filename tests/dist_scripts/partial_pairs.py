"""Two DDP processes training on partially paired rows (run under torchrun).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 partial_pairs.py OUT_DIR``

The model has three modalities (image, audio, text: small linear stand-ins) and two CLIP objectives, image-text
and audio-text, as in an ImageBind-style binding recipe. Each step's 8 rows are split 4 + 4 between the ranks so
that, in some steps, one rank has no audio-text pair (no audio row at all, or audio rows without text), and in
one step no rank has an audio-text pair. The module is wrapped in ``DistributedDataParallel`` without
``find_unused_parameters``, so a parameter left out of a step's graph, or collectives out of step, would fail or
hang. Checks, per step: the DDP loss (mean over ranks) and the averaged gradients equal those of one process on
the full 8-row batch (float64). A second module adds an objective without partial-batch support reading audio:
it must be skipped on both ranks together in a step where one rank has no audio, and run otherwise.
Rank 0 writes ``report.json``; the exit code is non-zero when a check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from dist_common import exit_without_teardown, publish_report
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmssl.batch import CLEAN, Batch
from mmssl.data.dataset import Collator
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.model import JointEmbeddingModel
from mmssl.objectives.alignment import CLIP
from mmssl.train.step import StepContext, TrainModule

TOL = 1e-9
MODALITIES = ("image", "audio", "text")
DIM = 5

# Which modalities each of the 8 rows of a step has; rows 0-3 go to rank 0, rows 4-7 to rank 1.
IM, A, T = "image", "audio", "text"
STEPS: dict[str, list[set[str]]] = {
    # rank 1 has no audio row at all
    "rank1_no_audio": [{IM, T}, {A, T}, {A, T}, {IM}, {IM, T}, {IM, T}, {T}, {IM}],
    # rank 1 has audio rows, but none with text (zero audio-text pairs; the audio encoder still runs)
    "rank1_audio_without_text": [{A, T}, {IM, T}, {A, T}, {IM, T}, {A}, {IM, T}, {A, IM}, {T}],
    # rank 0 has no image-text pair and no audio row; rank 1 has both pairs
    "rank0_one_modality": [{IM}, {T}, {IM}, {T}, {IM, T}, {A, T}, {IM, T}, {A, T}],
    # no audio-text pair on any process
    "no_audio_text_anywhere": [{IM, T}, {A}, {IM, T}, {T}, {IM, T}, {A, IM}, {IM, T}, {A}],
    # every row has every modality
    "fully_paired": [{IM, A, T}] * 8,
}


class Vector:
    """Processor of a stand-in modality whose raw values are float lists."""

    def decode(self, raw: Any) -> torch.Tensor:
        return torch.as_tensor(raw, dtype=torch.float64)

    def prepare(self, sample: torch.Tensor) -> torch.Tensor:
        return sample

    def augment(self, sample: torch.Tensor, rng: Any) -> torch.Tensor:
        return sample

    def collate(self, samples: list[torch.Tensor]) -> ModalityBatch:
        return ModalityBatch(torch.stack(samples))


class Tower(nn.Module):
    width = 6

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(DIM, self.width)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        h = torch.tanh(self.layer(batch.data))
        return EncoderOutput(tokens=h[:, None], pooled=h)


class NormObjective(nn.Module):
    """A single-modality objective without partial-batch support."""

    partial_rows = False

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality, self.inputs = modality, [(modality, CLEAN)]
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        pooled = ctx.encode(self.modality).pooled
        return {"loss": self.scale * pooled.pow(2).mean()}


def build(with_norm: bool, gather: bool = True) -> TrainModule:
    torch.manual_seed(0)
    model = JointEmbeddingModel({m: Tower() for m in MODALITIES}, embed_dim=4)
    objectives: dict[str, nn.Module] = {
        "clip": CLIP([("image", CLEAN), ("text", CLEAN)], init_temperature=0.07, gather=gather),
        "clip2": CLIP([("audio", CLEAN), ("text", CLEAN)], init_temperature=0.07, gather=gather),
    }
    if with_norm:
        objectives["norm"] = NormObjective("audio")
    processors = {m: Vector() for m in MODALITIES}
    return TrainModule(model, objectives, {k: 1.0 for k in objectives}, processors)


def make_batch(layout: list[set[str]], seed: int, rows: slice) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i, has in enumerate(layout):
        values = {m: torch.randn(DIM, generator=gen, dtype=torch.float64) for m in MODALITIES}
        items.append({"index": i, "label": i % 3, "views": {m: {CLEAN: values[m]} for m in has}})
    return Collator({m: Vector() for m in MODALITIES}, {m: [CLEAN] for m in MODALITIES})(items[rows])


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in module.named_parameters()}


def main() -> int:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.set_default_dtype(torch.float64)
    rank, world = dist.get_rank(), dist.get_world_size()
    failures: list[str] = []
    report: dict[str, Any] = {"world_size": world}
    per_rank = 8 // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)

    # 1. CLIP image-text + CLIP audio-text: DDP == one process on the full batch, step by step.
    ddp = DistributedDataParallel(build(with_norm=False))
    reference = build(with_norm=False, gather=False)  # one process: no collectives
    for seed, (name, layout) in enumerate(STEPS.items()):
        ddp.zero_grad(set_to_none=True)
        terms = ddp(make_batch(layout, seed, mine))
        terms["loss"].backward()
        got = grads(ddp.module)
        loss = terms["loss"].detach().clone()
        dist.all_reduce(loss)
        loss /= world
        pairs = torch.tensor([float(terms["clip2/pairs"])])
        dist.all_reduce(pairs)
        if rank == 0:
            reference.zero_grad(set_to_none=True)
            ref_terms = reference(make_batch(layout, seed, slice(0, 8)))
            ref_terms["loss"].backward()
            want = grads(reference)
            entry = {
                "loss": float(ref_terms["loss"]),
                "loss_diff": abs(float(loss) - float(ref_terms["loss"])),
                "grad_diff": max(float((got[k] - want[k]).abs().max()) for k in want),
                "grad_norm": float(sum(g.pow(2).sum() for g in want.values()) ** 0.5),
                "audio_text_pairs": float(pairs),
            }
            report[name] = entry
            if not (entry["loss_diff"] < TOL and entry["grad_diff"] < TOL):
                failures.append(name)

    # 2. Plus an objective without partial-batch support on audio: skipped on every rank together.
    ddp = DistributedDataParallel(build(with_norm=True))
    ran = {}
    for seed, (name, layout) in enumerate(STEPS.items()):
        ddp.zero_grad(set_to_none=True)
        terms = ddp(make_batch(layout, seed, mine))
        terms["loss"].backward()
        flag = torch.tensor([float("norm/loss" in terms)])
        both = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(both, flag)
        ran[name] = [bool(f) for f in both]
    # A last forward/backward: DDP raises here if a parameter got no gradient in the step before.
    ddp(make_batch(STEPS["fully_paired"], 99, mine))["loss"].backward()
    if rank == 0:
        report["norm_ran"] = ran
        expected = {
            name: all(any(A in row for row in layout[r * per_rank : (r + 1) * per_rank]) for r in range(world))
            for name, layout in STEPS.items()
        }
        if any(ran[name] != [expected[name]] * world for name in STEPS):
            failures.append("norm_skipping")

    return publish_report(out_dir, report, failures, rank == 0)


if __name__ == "__main__":
    exit_without_teardown(main())
