"""Alignment and uniformity on the hypersphere (Wang & Isola, 2020) as an mmssl objective.

``align = mean ||z_a - z_b||^2`` pulls two views of a row together; ``uniform = log mean exp(-t ||z_i - z_j||^2)``
over distinct rows spreads the embeddings over the sphere. Both read the shared-space embeddings (unit norm).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.train.step import StepContext


def align_uniform_loss(z_a: Tensor, z_b: Tensor, t: float = 2.0, uniformity_weight: float = 1.0) -> dict[str, Tensor]:
    """Shapes: z_a, z_b [B, E] unit-norm embeddings of two views of the same rows -> scalar terms."""
    align = (z_a - z_b).pow(2).sum(-1).mean()
    z = torch.cat([z_a, z_b])
    uniform = torch.pdist(z).pow(2).mul(-t).exp().mean().log()
    return {"loss": align + uniformity_weight * uniform, "align": align.detach(), "uniform": uniform.detach()}


class AlignUniformOptions(ObjectiveOptions):
    modality: str = Field(description="Modality whose two views are aligned.")
    views: tuple[str, str] = ("view0", "view1")
    t: float = Field(2.0, gt=0, description="Temperature of the uniformity kernel.")
    uniformity_weight: float = Field(1.0, ge=0)

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, v) for v in self.views]

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, "views")]

    def shared_space(self) -> list[str]:
        return [self.modality]


class AlignUniform(nn.Module):
    """Flat arguments from the builder; the module never sees the recipe (``mmssl.train.step.Objective``)."""

    partial_rows = False

    def __init__(self, modality: str, views: tuple[str, str], t: float, uniformity_weight: float) -> None:
        super().__init__()
        self.modality, self.views, self.t, self.uniformity_weight = modality, views, t, uniformity_weight
        self.inputs = [(modality, v) for v in views]

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        z_a, z_b = (ctx.embed(self.modality, v) for v in self.views)
        return align_uniform_loss(z_a.float(), z_b.float(), self.t, self.uniformity_weight)


@register_objective("align_uniform", AlignUniformOptions)
def build_align_uniform(options: AlignUniformOptions, info: BuildInfo) -> nn.Module:
    return AlignUniform(options.modality, options.views, options.t, options.uniformity_weight)
