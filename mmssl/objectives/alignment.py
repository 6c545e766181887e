"""Cross-modal alignment of paired rows in the shared embedding space: CLIP and SigLIP.

Partially paired data: only the rows that have both modalities are aligned, and a micro-batch may hold none of
them on some process (or none of one modality at all). Such a process still takes part in the gathers the
others make and contributes a zero loss (the losses of ``functional`` accept zero local rows and keep them in
the autograd graph, so the collectives of the backward pass match too).
Several pair objectives over one hub modality (image-text, audio-text, ...) bind the modalities through it
(ImageBind); see ``docs/binding.md``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmssl.batch import CLEAN
from mmssl.modality import ModalityBatch
from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.objectives.distributed import rank
from mmssl.objectives.functional import clip_loss, content_ids, siglip_loss
from mmssl.objectives.matryoshka import matryoshka_loss, nested_widths
from mmssl.train.step import StepContext


class PairOptions(ObjectiveOptions):
    modalities: tuple[str, str] = Field(description="The two paired modalities, e.g. [image, text].")
    views: tuple[str, str] = Field((CLEAN, CLEAN), description="Which view of each modality to align.")
    gather: bool = Field(True, description="Use negatives from all processes (gathered with gradient).")
    positives: Literal["identical", "pairs"] = Field(
        "identical",
        description="`identical`: rows whose input is identical in either modality (e.g. the same caption) are "
        "positives of each other instead of negatives (UniCL); `pairs`: only a row's own pair (CLIP and SigLIP "
        "as published). The two agree on data without duplicates.",
    )
    matryoshka: list[int] = Field(
        default_factory=list,
        description="Nested widths of the shared embedding (e.g. [16, 32, 64]): the loss is averaged over these "
        "prefixes and the full width (Matryoshka); evaluate them with `widths` of knn / linear_probe.",
    )

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

    def shared_space(self) -> list[str]:
        return list(self.modalities)


def paired_embeddings(ctx: StepContext, inputs: list[tuple[str, str]]) -> tuple[Tensor, Tensor]:
    """Shared-space embeddings of the rows that have both modalities. Shapes: -> ([P, E], [P, E]), P may be 0.

    ``inputs`` is ``[(a, view of a), (b, view of b)]``. With P = 0 both are still attached to the parameters of both
    modalities (see ``StepContext.embed``). Half precision is raised to float32 (the similarity matmul still runs in
    the autocast dtype).
    """
    (a, va), (b, vb) = inputs
    ia, ib = ctx.paired_rows(a, b)
    return _at_least_float32(ctx.embed(a, va)[ia]), _at_least_float32(ctx.embed(b, vb)[ib])


def paired_content_ids(
    ctx: StepContext, inputs: list[tuple[str, str]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Content ids of the paired rows' inputs in each modality (see ``functional.content_ids``). Shapes: ([P], [P]).

    Rows whose input cannot be hashed (e.g. graphs) get ids unique over all processes, so they only match their
    own pair.
    """
    (a, va), (b, vb) = inputs
    ia, ib = ctx.paired_rows(a, b)
    ids_a, ids_b = _row_ids(ctx, a, va, device), _row_ids(ctx, b, vb, device)
    return ids_a[ia.to(device)], ids_b[ib.to(device)]


def _row_ids(ctx: StepContext, modality: str, view: str, device: torch.device) -> Tensor:
    """[B_m] long content ids of the modality's rows; [0] when the micro-batch has none."""
    if not ctx.has(modality, view):
        return torch.zeros(0, dtype=torch.long, device=device)
    batch: ModalityBatch = ctx.inputs(modality, view)
    data = batch.data
    n = len(batch)
    tensors = [data] if isinstance(data, Tensor) else list(data.values()) if isinstance(data, dict) else []
    parts = [content_ids(t).to(device) for t in tensors if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == n]
    if not parts:  # unhashable input: ids that are negative (a hash never is) and unique over processes
        return -(torch.arange(n, device=device) + 1 + rank() * 2**32)
    return parts[0] if len(parts) == 1 else content_ids(torch.stack(parts, 1))


def _at_least_float32(x: Tensor) -> Tensor:
    """Half-precision embeddings (autocast) as float32, so that every process gathers one dtype: a process
    without rows of a modality has no encoder output to take the autocast dtype from."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class CLIPOptions(PairOptions):
    init_temperature: float = Field(0.07, gt=0, description="Initial softmax temperature (learned).")


class CLIP(nn.Module):
    """CLIP's symmetric InfoNCE over the paired rows of ``inputs`` (two (modality, view) pairs)."""

    partial_rows = True  # runs on every micro-batch, also without pairs (see TrainModule)
    cacheable = True  # reads the encoders only through the step context (GradCache)

    def __init__(
        self,
        inputs: list[tuple[str, str]],
        init_temperature: float,
        gather: bool,
        matryoshka: list[int] | None = None,
        positives: str = "identical",
    ) -> None:
        super().__init__()
        self.inputs, self.gather, self.widths = inputs, gather, list(matryoshka or [])
        self.identical_positive = positives == "identical"
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        x, y = paired_embeddings(ctx, self.inputs)
        ids = paired_content_ids(ctx, self.inputs, x.device) if self.identical_positive else (None, None)

        def loss(a: Tensor, b: Tensor) -> dict[str, Tensor]:
            return clip_loss(a, b, self.logit_scale, gather=self.gather, ids=ids)

        terms = matryoshka_loss(loss, x, y, self.widths)
        terms["pairs"] = torch.tensor(float(x.shape[0]), device=x.device)
        terms["temperature"] = (1.0 / self.logit_scale.detach().exp()).clamp_min(0.01)
        return terms


class SigLIPOptions(PairOptions):
    init_scale: float = Field(10.0, gt=0, description="Initial logit scale t' (learned as log t').")
    init_bias: float = Field(-10.0, description="Initial logit bias (learned).")


class SigLIP(nn.Module):
    """SigLIP's pairwise sigmoid loss over the paired rows of ``inputs`` (two (modality, view) pairs)."""

    partial_rows = True
    cacheable = True  # reads the encoders only through the step context (GradCache)

    def __init__(
        self,
        inputs: list[tuple[str, str]],
        init_scale: float,
        init_bias: float,
        gather: bool,
        matryoshka: list[int] | None = None,
        positives: str = "identical",
    ) -> None:
        super().__init__()
        self.inputs, self.gather, self.widths = inputs, gather, list(matryoshka or [])
        self.identical_positive = positives == "identical"
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(init_bias))

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        x, y = paired_embeddings(ctx, self.inputs)
        ids = paired_content_ids(ctx, self.inputs, x.device) if self.identical_positive else (None, None)

        def loss(a: Tensor, b: Tensor) -> dict[str, Tensor]:
            return siglip_loss(a, b, self.logit_scale, self.logit_bias, gather=self.gather, ids=ids)

        terms = matryoshka_loss(loss, x, y, self.widths)
        terms["pairs"] = torch.tensor(float(x.shape[0]), device=x.device)
        return terms


@register_objective("clip", CLIPOptions)
def build_clip(options: CLIPOptions, info: BuildInfo) -> nn.Module:
    nested_widths(options.matryoshka, info.embed_dim)  # fail at build, not at the first step
    return CLIP(options.inputs(), options.init_temperature, options.gather, options.matryoshka, options.positives)


@register_objective("siglip", SigLIPOptions)
def build_siglip(options: SigLIPOptions, info: BuildInfo) -> nn.Module:
    nested_widths(options.matryoshka, info.embed_dim)
    return SigLIP(
        options.inputs(), options.init_scale, options.init_bias, options.gather, options.matryoshka, options.positives
    )
