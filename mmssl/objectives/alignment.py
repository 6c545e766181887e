"""Cross-modal alignment of paired rows in the shared embedding space: CLIP and SigLIP."""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmssl.data.dataset import CLEAN
from mmssl.objectives.base import BuildInfo, ObjectiveOptions, StepContext, register_objective
from mmssl.objectives.functional import clip_loss, siglip_loss


class PairOptions(ObjectiveOptions):
    modalities: tuple[str, str] = Field(description="The two paired modalities, e.g. [image, text].")
    views: tuple[str, str] = Field((CLEAN, CLEAN), description="Which view of each modality to align.")
    gather: bool = Field(True, description="Use negatives from all processes (gathered with gradient).")

    @field_validator("modalities")
    @classmethod
    def distinct(cls, value: tuple[str, str]) -> tuple[str, str]:
        if value[0] == value[1]:
            raise ValueError("the two modalities must differ")
        return value

    def inputs(self) -> list[tuple[str, str]]:
        return list(zip(self.modalities, self.views, strict=True))

    def requirements(self) -> list[tuple[str, str]]:
        return [(m, "pairing") for m in self.modalities]


def paired_embeddings(ctx: StepContext, options: PairOptions) -> tuple[Tensor, Tensor]:
    """Shared-space embeddings of the rows that have both modalities. Shapes: -> ([P, E], [P, E])."""
    (a, b), (va, vb) = options.modalities, options.views
    ia, ib = ctx.paired_rows(a, b)
    return ctx.embed(a, va)[ia], ctx.embed(b, vb)[ib]


class CLIPOptions(PairOptions):
    init_temperature: float = Field(0.07, gt=0, description="Initial softmax temperature (learned).")


class CLIP(nn.Module):
    def __init__(self, options: CLIPOptions) -> None:
        super().__init__()
        self.options = options
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / options.init_temperature)))

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        x, y = paired_embeddings(ctx, self.options)
        terms = clip_loss(x, y, self.logit_scale, gather=self.options.gather)
        terms["temperature"] = (1.0 / self.logit_scale.detach().exp()).clamp_min(0.01)
        return terms


class SigLIPOptions(PairOptions):
    init_scale: float = Field(10.0, gt=0, description="Initial logit scale t' (learned as log t').")
    init_bias: float = Field(-10.0, description="Initial logit bias (learned).")


class SigLIP(nn.Module):
    def __init__(self, options: SigLIPOptions) -> None:
        super().__init__()
        self.options = options
        self.logit_scale = nn.Parameter(torch.tensor(math.log(options.init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(options.init_bias))

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        x, y = paired_embeddings(ctx, self.options)
        return siglip_loss(x, y, self.logit_scale, self.logit_bias, gather=self.options.gather)


@register_objective("clip", CLIPOptions)
def build_clip(options: CLIPOptions, info: BuildInfo) -> nn.Module:
    return CLIP(options)


@register_objective("siglip", SigLIPOptions)
def build_siglip(options: SigLIPOptions, info: BuildInfo) -> nn.Module:
    return SigLIP(options)
