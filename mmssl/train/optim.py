"""Optimizer construction: AdamW without weight decay on biases, norms and other 1-D parameters."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=betas)
