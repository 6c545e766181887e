"""Latent masked prediction (data2vec 2.0 / JEPA style): predict an EMA teacher's features of hidden tokens.

The student encodes a masked copy of the input (only the visible tokens when the plugin's mask drops tokens
through ``keep``, e.g. images; the full sequence with hidden tokens replaced otherwise, e.g. text); a light
:class:`~mmssl.objectives.masked.MaskedDecoder` predicts, at every hidden position, the teacher's target: the
average of the teacher's last ``top_k`` block outputs, each instance-normalised, then layer-normalised
(:func:`~mmssl.objectives.noncontrastive.data2vec_targets`). The teacher is an EMA copy of the encoder run once
on the full clean input; as in data2vec 2.0 the student batch is repeated ``num_masks`` times with different
masks, so one teacher pass serves several student passes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmssl.batch import CLEAN
from mmssl.masking import block_masks
from mmssl.modality import MaskedInput, ModalityBatch
from mmssl.objectives.base import BuildInfo, register_objective
from mmssl.objectives.distillation import TeacherOptions
from mmssl.objectives.functional import masked_mse
from mmssl.objectives.masked import MaskedDecoder
from mmssl.objectives.noncontrastive import data2vec_targets
from mmssl.objectives.teacher import EMATeacher
from mmssl.train.step import StepContext


def repeat_rows(x: Any, repeats: int) -> Any:
    """Repeat every row ``repeats`` times in place (``repeat_interleave`` on dim 0).

    Handles tensors, dicts of them, and batches of variable-size items that can be split into a list and
    re-collated (``to_data_list`` / ``from_data_list``, as torch_geometric's ``Batch``).
    """
    if repeats == 1 or x is None:
        return x
    if isinstance(x, Tensor):
        return x.repeat_interleave(repeats, dim=0)
    if isinstance(x, dict):
        return {k: repeat_rows(v, repeats) for k, v in x.items()}
    if hasattr(x, "to_data_list") and hasattr(type(x), "from_data_list"):  # torch_geometric Batch and the like
        return type(x).from_data_list([row for row in x.to_data_list() for _ in range(repeats)])
    raise TypeError(f"cannot repeat batch data of type {type(x).__name__}: use num_masks 1 for this modality")


def repeat_batch(batch: ModalityBatch, repeats: int) -> ModalityBatch:
    """Row i of the input becomes rows ``i * repeats .. (i + 1) * repeats - 1``. Shapes: [B, ...] -> [B * r, ...]."""
    return ModalityBatch(
        repeat_rows(batch.data, repeats), repeat_rows(batch.padding_mask, repeats), repeat_rows(batch.keep, repeats)
    )


def encoder_layers(encoder: nn.Module, batch: ModalityBatch) -> list[Tensor]:
    """Per-block token outputs of an encoder (``forward_layers``), or its final tokens if it has none."""
    layers = encoder.forward_layers(batch) if hasattr(encoder, "forward_layers") else []
    return layers or [encoder(batch).tokens]


class Data2VecOptions(TeacherOptions):
    view: str = Field(CLEAN, description="Which view is masked (the teacher sees the same view, unmasked).")
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="Share of tokens hidden from the student.")
    num_masks: int = Field(2, ge=1, description="Masked copies of each row per step (data2vec 2.0: 8 to 16).")
    top_k: int = Field(4, ge=1, description="Teacher blocks averaged into the target (all if the encoder has fewer).")
    decoder_width: int = Field(128, ge=8)
    decoder_depth: int = Field(1, ge=0, description="Decoder blocks (0: a linear head on the student tokens).")
    decoder_heads: int = Field(4, ge=1)
    masking: Literal["random", "block"] = Field(
        "random",
        description="random: the plugin's random masks (mask_ratio). block: JEPA multi-block masks, a context "
        "block the student sees and num_targets target blocks it predicts (rectangles on a plugin's 2-D token grid, "
        "contiguous spans on 1-D sequences); needs a plugin whose masks drop tokens.",
    )
    num_targets: int = Field(4, ge=1, description="block masking: target blocks per row (I-JEPA: 4).")
    target_scale: tuple[float, float] = Field((0.15, 0.2), description="block masking: area share of each target.")
    context_scale: tuple[float, float] = Field((0.85, 1.0), description="block masking: area share of the context.")

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, self.view)]

    def requirements(self) -> list[tuple[str, str]]:
        # Block masks drop tokens: continuous (drop-style) masking, refused at validate for replace-style plugins.
        return [(self.modality, "masking:continuous" if self.masking == "block" else "masking")]


def block_masked(
    processor: Any,
    masked: MaskedInput,
    batch: ModalityBatch,
    num_targets: int,
    target_scale: tuple[float, float],
    context_scale: tuple[float, float],
) -> MaskedInput:
    """Replace a plugin's random mask with JEPA multi-block masks on its token grid (``processor.token_grid``,
    else a 1-D sequence of the mask's N tokens); targets stay the plugin's. See ``mmssl.masking.block_masks``.

    Shapes:
        masked.mask [B, N] -> keep [B, K] (context), mask [B, N] (target blocks).
    """
    b, n = masked.mask.shape
    grid = processor.token_grid(batch) if hasattr(processor, "token_grid") else (n,)
    blocks = block_masks(b, grid, num_targets, target_scale, context_scale=context_scale, device=masked.mask.device)
    return MaskedInput(batch=batch.with_keep(blocks.keep), mask=blocks.target, target=masked.target)


class Data2Vec(nn.Module):
    """The student predicts, at hidden positions of ``num_masks`` masked copies of each row, the EMA teacher's
    ``top_k``-layer target on the clean input. The teacher's ``after_optimizer_step`` follows the encoder."""

    partial_rows = False

    def __init__(
        self,
        modality: str,
        view: str,
        mask_ratio: float,
        num_masks: int,
        top_k: int,
        decoder: MaskedDecoder,
        teacher: EMATeacher,
        block: tuple[int, tuple[float, float], tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        self.modality, self.view, self.mask_ratio, self.num_masks, self.top_k = (
            modality,
            view,
            mask_ratio,
            num_masks,
            top_k,
        )
        self.inputs = [(modality, view)]
        self.decoder, self.teacher = decoder, teacher
        self.block = block  # (num_targets, target_scale, context_scale) of JEPA block masks; None: random masks

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        clean = ctx.inputs(self.modality, self.view)
        teacher_encoder = self.teacher.ensure("encoder", ctx.model.encoders[self.modality])
        with torch.no_grad():
            targets = data2vec_targets(encoder_layers(teacher_encoder, clean), self.top_k, clean.padding_mask)
        student_input = repeat_batch(clean, self.num_masks)
        processor = ctx.processors[self.modality]
        masked: MaskedInput = processor.mask(student_input, self.mask_ratio)
        if self.block is not None:
            masked = block_masked(processor, masked, student_input, *self.block)
        out = ctx.model.encode(self.modality, masked.batch)
        num_tokens = masked.mask.shape[1]
        if targets.shape[1] != num_tokens:
            raise ValueError(
                f"data2vec: the teacher gave {targets.shape[1]} tokens per row but the mask covers {num_tokens}"
            )
        pred = self.decoder(out.tokens, masked.batch.keep, num_tokens, student_input.padding_mask)
        hidden = masked.mask
        if student_input.padding_mask is not None:
            hidden = hidden & ~student_input.padding_mask
        target = targets.repeat_interleave(self.num_masks, dim=0)
        loss = masked_mse(pred.float(), target, hidden)
        with torch.no_grad():
            cos = nn.functional.cosine_similarity(pred.float()[hidden], target[hidden], dim=-1).mean()
        return {"loss": loss, "cos": cos, "momentum": self.teacher.momentum.detach().clone()}


@register_objective("data2vec", Data2VecOptions)
def build_data2vec(options: Data2VecOptions, info: BuildInfo) -> nn.Module:
    o, width = options, info.widths[options.modality]
    probe = info.processors[o.modality].mask(info.probes[o.modality], o.mask_ratio)
    drops_tokens = probe.batch.keep is not None
    if o.masking == "block" and not drops_tokens:
        raise ValueError(
            f"data2vec masking: block needs modality {o.modality!r} to drop hidden tokens (images, audio, "
            "series do; text replaces them): use masking: random"
        )
    decoder = MaskedDecoder(width, o.decoder_width, o.decoder_depth, o.decoder_heads, width, drops_tokens)
    teacher = EMATeacher(encoders={"encoder": o.modality}, base_momentum=o.momentum, final_momentum=o.final_momentum)
    block = (o.num_targets, o.target_scale, o.context_scale) if o.masking == "block" else None
    return Data2Vec(o.modality, o.view, o.mask_ratio, o.num_masks, o.top_k, decoder, teacher, block)
