"""Optimizer construction: AdamW without weight decay on biases, norms and other 1-D parameters, and optional
layer-wise learning-rate decay over the encoders' blocks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmssl.encoders.adapt import layer_stack


def layer_scales(encoders: Iterable[nn.Module], decay: float) -> dict[int, float]:
    """``id(parameter) -> lr scale`` for layer-wise decay (BEiT / ELECTRA style).

    For an encoder with L blocks (``layer_stack``), block i (0-based) gets ``decay ** (L - i)`` and the stem
    ``decay ** (L + 1)``; parameters not listed (final norms, poolers, heads, projections) keep scale 1.
    """
    scales: dict[int, float] = {}
    for encoder in encoders:
        stem, blocks = layer_stack(encoder)
        depth = len(blocks)
        for module in stem:
            for param in module.parameters():
                scales[id(param)] = decay ** (depth + 1)
        for i, block in enumerate(blocks):
            for param in block.parameters():
                scales[id(param)] = decay ** (depth - i)
    return scales


def param_groups(
    module: nn.Module, weight_decay: float, lr: float = 1.0, scales: dict[int, float] | None = None
) -> list[dict]:
    """Trainable parameters grouped by (weight decay on or off, lr scale); each group carries its own ``lr``."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for _, param in module.named_parameters():
        if not param.requires_grad:
            continue
        key = (param.ndim >= 2, (scales or {}).get(id(param), 1.0))
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": lr * scale}
        for (decays, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]


def build_optimizer(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    layer_decay: float | None = None,
    encoders: Iterable[nn.Module] = (),
) -> torch.optim.Optimizer:
    """AdamW over ``module``'s trainable parameters; with ``layer_decay``, blocks of ``encoders`` get lower lrs."""
    scales = layer_scales(encoders, layer_decay) if layer_decay is not None else None
    groups = param_groups(module, weight_decay, lr, scales)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (check modalities.*.encoder.train)")
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
