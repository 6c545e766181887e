"""Masked prediction: MAE-style reconstruction of hidden tokens and MLM-style prediction of hidden ids.

The plugin decides how tokens are hidden (dropped from the encoder's input, or replaced) and what the targets
are; this module only decodes the encoder's tokens back to every position and scores the hidden ones.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from mmssl.batch import CLEAN
from mmssl.encoders.transformer import Transformer, _init_weights, sincos_positions
from mmssl.modality import MaskedInput
from mmssl.objectives.base import BuildInfo, ObjectiveOptions, register_objective
from mmssl.objectives.functional import masked_cross_entropy, masked_mse
from mmssl.train.step import StepContext


class MaskedDecoder(nn.Module):
    """Places encoded visible tokens back among mask tokens and predicts every position.

    Args:
        in_width: Encoder width D.
        width: Decoder width.
        depth: Decoder blocks (0: a linear head on the encoder's tokens, as in BERT's MLM).
        heads: Decoder attention heads.
        out_dim: Prediction size per token (P values, or the number of classes).
        drops_tokens: The plugin's masks drop tokens (``keep``), so hidden positions get a learned mask token;
            False when it replaces them in place (MLM), where a mask token would be a parameter without gradient
            that DDP rejects.
    """

    def __init__(
        self, in_width: int, width: int, depth: int, heads: int, out_dim: int, drops_tokens: bool = True
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if drops_tokens else None
        self.blocks = Transformer(width, depth, heads) if depth else nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)
        self.apply(_init_weights)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, keep: Tensor | None, num_tokens: int, padding_mask: Tensor | None) -> Tensor:
        """Shapes: tokens [B, K, D] (K = N if nothing was dropped), keep [B, K], padding_mask [B, N] -> [B, N, out]."""
        x = self.embed(tokens)
        if keep is not None:
            if self.mask_token is None:
                raise ValueError("this decoder was built for masks that keep every token, but got `keep` indices")
            full = self.mask_token.to(x.dtype).expand(x.shape[0], num_tokens, -1).clone()
            x = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        if self.depth:
            x = x + sincos_positions(num_tokens, x.shape[-1], x.device).to(x.dtype)
            x = self.blocks(x, padding_mask)
        else:
            x = self.blocks(x)
        return self.head(x)


class MaskedOptions(ObjectiveOptions):
    modality: str = Field(description="Modality whose tokens are hidden and predicted.")
    view: str = Field(CLEAN, description="Which view is masked.")
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="Share of tokens hidden.")
    decoder_width: int = Field(128, ge=8)
    decoder_depth: int = Field(2, ge=0)
    decoder_heads: int = Field(4, ge=1)
    target_kind: ClassVar[str] = "continuous"

    def inputs(self) -> list[tuple[str, str]]:
        return [(self.modality, self.view)]

    def requirements(self) -> list[tuple[str, str]]:
        return [(self.modality, f"masking:{self.target_kind}")]


class MLMOptions(MaskedOptions):
    mask_ratio: float = Field(0.15, gt=0, lt=1, description="Share of tokens hidden.")
    decoder_depth: int = Field(0, ge=0, description="0: a linear head over the encoder's tokens.")
    target_kind: ClassVar[str] = "categorical"


class MaskedPrediction(nn.Module):
    """Hide a ``mask_ratio`` of the tokens of one (modality, view), encode the rest, decode and score the hidden."""

    partial_rows = False

    def __init__(self, modality: str, view: str, mask_ratio: float, decoder: MaskedDecoder) -> None:
        super().__init__()
        self.modality, self.view, self.mask_ratio, self.decoder = modality, view, mask_ratio, decoder
        self.inputs = [(modality, view)]

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        clean = ctx.inputs(self.modality, self.view)
        masked: MaskedInput = ctx.processors[self.modality].mask(clean, self.mask_ratio)
        out = ctx.model.encode(self.modality, masked.batch)
        pred = self.decoder(out.tokens, masked.batch.keep, masked.mask.shape[1], clean.padding_mask)
        if masked.kind == "categorical":
            loss = masked_cross_entropy(pred.float(), masked.target, masked.mask)
            acc = (pred.argmax(-1) == masked.target)[masked.mask].float().mean().detach()
            return {"loss": loss, "acc": acc}
        return {"loss": masked_mse(pred.float(), masked.target.float(), masked.mask)}


def build_masked(options: MaskedOptions, info: BuildInfo) -> nn.Module:
    processor = info.processors[options.modality]
    probe = processor.mask(info.probes[options.modality], options.mask_ratio)
    out_dim = probe.num_classes if probe.kind == "categorical" else probe.target.shape[-1]
    if probe.kind != options.target_kind:
        raise ValueError(f"objective {options.name!r} expects {options.target_kind} targets, plugin gave {probe.kind}")
    decoder = MaskedDecoder(
        info.widths[options.modality],
        options.decoder_width,
        options.decoder_depth,
        options.decoder_heads,
        out_dim,
        drops_tokens=probe.batch.keep is not None,
    )
    return MaskedPrediction(options.modality, options.view, options.mask_ratio, decoder)


register_objective("mae", MaskedOptions)(build_masked)
register_objective("mlm", MLMOptions)(build_masked)
