"""Tiny transformer towers and fixed batches for the step-equivalence tests (GradCache, DDP, FSDP).

Three stand-in modalities (image, audio, text) whose raw values are ``[N, F]`` float tokens, each encoded by the
project's own ``TransformerEncoder`` (so blocks, class token, dropout and layer stacks are the real ones), and the
project's objectives on top. Batches are made from a seed, so every process can build the same global batch and
take its slice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmssl.data.dataset import CLEAN, Batch, Collator
from mmssl.encoders.transformer import TransformerEncoder
from mmssl.modality import MaskedInput, ModalityBatch
from mmssl.model import JointEmbeddingModel
from mmssl.objectives.alignment import CLIPOptions, SigLIPOptions, build_clip, build_siglip
from mmssl.objectives.base import BuildInfo
from mmssl.objectives.contrastive import SimCLROptions, build_simclr
from mmssl.objectives.distillation import BYOLOptions, build_byol
from mmssl.objectives.masked import MaskedOptions, build_masked
from mmssl.train.step import TrainModule

MODALITIES = ("image", "audio", "text")
VIEWS = [CLEAN, "view0", "view1"]
TOKENS, FEATURES, WIDTH = 5, 6, 16


class TokenEmbedder(nn.Module):
    """``[B, N, F]`` float tokens -> ``[B, N, D]`` with learned positions."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, width)
        self.pos = nn.Parameter(torch.randn(TOKENS, width) * 0.02)

    def forward(self, data: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.linear(data) + self.pos, None


class Tokens:
    """Processor of a stand-in modality: samples are ``[N, F]`` tensors, views are given."""

    def collate(self, samples: list[torch.Tensor]) -> ModalityBatch:
        return ModalityBatch(torch.stack(samples))

    def mask(self, batch: ModalityBatch, ratio: float, generator: torch.Generator | None = None) -> MaskedInput:
        """Keep the tokens with the smallest first feature: a mask fixed by each row's content, so one process
        and two processes hide the same tokens. Shapes: data [B, N, F] -> keep [B, K], mask [B, N], target data."""
        data = batch.data
        n = data.shape[1]
        keep = data[..., 0].argsort(dim=1)[:, : round(n * (1 - ratio))].sort(dim=1).values
        hidden = torch.ones(data.shape[:2], dtype=torch.bool).scatter(1, keep, False)
        return MaskedInput(batch=batch.with_keep(keep), mask=hidden, target=data)


def tower(dropout: float = 0.0, depth: int = 2) -> TransformerEncoder:
    return TransformerEncoder(TokenEmbedder(FEATURES, WIDTH), WIDTH, depth, heads=2, dropout=dropout)


USES = {"clip": 2, "siglip": 2, "simclr": 1, "mae": 1, "byol": 1, "binding": 3}


def build(kind: str, dropout: float = 0.0, gather: bool = True, depth: int = 2, seed: int = 0) -> TrainModule:
    """A ``TrainModule`` for ``kind``: clip, siglip, simclr, mae, byol (EMA teacher), or binding (CLIP image-text +
    CLIP audio-text), with encoders for the modalities it uses only (DDP wants every parameter used)."""
    torch.manual_seed(seed)
    used = {"image": 1, "text": 2, "audio": 3}
    modalities = [m for m in MODALITIES if used[m] <= USES[kind]]
    model = JointEmbeddingModel({m: tower(dropout, depth) for m in modalities}, embed_dim=8)
    processors = {m: Tokens() for m in modalities}
    info = BuildInfo(
        {m: WIDTH for m in modalities}, 8, processors, {"image": make_batch(kind, 2, 0).inputs["image"][CLEAN]}
    )
    pair = {"modalities": ("image", "text"), "views": ("view0", CLEAN), "gather": gather}
    objectives: dict[str, nn.Module] = {
        "clip": lambda: {"clip": build_clip(CLIPOptions(name="clip", **pair), info)},
        "siglip": lambda: {"siglip": build_siglip(SigLIPOptions(name="siglip", init_bias=-2.0, **pair), info)},
        "simclr": lambda: {
            "simclr": build_simclr(
                SimCLROptions(name="simclr", modality="image", proj_dim=8, hidden_dim=12, gather=gather), info
            )
        },
        "binding": lambda: {
            "clip": build_clip(CLIPOptions(name="clip", **pair), info),
            "clip2": build_clip(CLIPOptions(name="clip", modalities=("audio", "text"), gather=gather), info),
        },
        "mae": lambda: {
            "mae": build_masked(
                MaskedOptions(
                    name="mae", modality="image", mask_ratio=0.6, decoder_width=8, decoder_depth=1, decoder_heads=2
                ),
                info,
            )
        },
        "byol": lambda: {
            "byol": build_byol(
                BYOLOptions(name="byol", modality="image", proj_dim=8, hidden_dim=12, pred_hidden_dim=12, momentum=0.9),
                info,
            )
        },
    }[kind]()
    return TrainModule(model, objectives, {k: 1.0 for k in objectives}, processors)


def layout(kind: str, rows: int) -> list[set[str]]:
    """Which modalities each row has: all of them, or for binding alternately image-text and audio-text rows."""
    if kind == "binding":
        return [{"image", "text"} if i % 3 else {"audio", "text"} for i in range(rows)]
    return [set(MODALITIES)] * rows


def make_batch(kind: str, rows: int, seed: int, part: slice | None = None) -> Batch:
    """The seeded global batch of ``rows`` rows, or its rows ``part``."""
    gen = torch.Generator().manual_seed(seed)
    items: list[dict[str, Any]] = []
    for i, has in enumerate(layout(kind, rows)):
        values = {m: {v: torch.randn(TOKENS, FEATURES, generator=gen) for v in VIEWS} for m in MODALITIES}
        items.append({"index": i, "label": i % 3, "views": {m: values[m] for m in has}})
    items = items[part] if part is not None else items
    return Collator({m: Tokens() for m in MODALITIES}, {m: VIEWS for m in MODALITIES})(items)


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> gradient (zeros where there is none), full tensors also for FSDP's sharded DTensors."""
    out = {}
    for name, p in module.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return out
