"""KoLeo: a regulariser that spreads one modality's pooled embeddings over the sphere (DINOv2's third term).

Combine it with any objective on the same views (``{name: koleo, modality: image, weight: 0.1}`` beside
``dino``, as DINOv2 does): the step context encodes each view once, so the term costs no extra forward pass.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from mmssl.batch import CLEAN
from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.objectives.noncontrastive import koleo_loss
from mmssl.train.step import StepContext


class KoLeoOptions(ObjectiveOptions):
    modality: str = Field(description="Modality whose pooled embeddings are spread.")
    views: list[str] = Field(
        ["view0", "view1"], min_length=1, description="Views whose batches are spread, each on its own."
    )

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, "views")] if any(v != CLEAN for v in self.views) else []


class KoLeo(nn.Module):
    """The sum over ``views`` of :func:`~mmssl.objectives.noncontrastive.koleo_loss` of the pooled embeddings, each
    on the local batch of its process (as DINOv2). A local batch of one row (the last batch of an epoch can be one)
    has no nearest neighbour: it adds zero, not an error."""

    partial_rows = False

    def __init__(self, modality: str, views: list[str]) -> None:
        super().__init__()
        self.modality, self.views = modality, list(views)
        self.inputs = [(modality, v) for v in self.views]

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        per_view = [spread_term(ctx.encode(self.modality, v).pooled) for v in self.views]
        return {"loss": sum(per_view[1:], per_view[0])}


def spread_term(pooled: Tensor) -> Tensor:
    """``koleo_loss`` of ``pooled [n, d]``, or a zero still tied to it (every parameter keeps a gradient, as DDP
    expects) when ``n < 2``."""
    return koleo_loss(pooled) if pooled.shape[0] >= 2 else pooled.sum() * 0.0


@register_objective("koleo", KoLeoOptions)
def build_koleo(options: KoLeoOptions, info: BuildInfo) -> nn.Module:
    return KoLeo(options.modality, options.views)
