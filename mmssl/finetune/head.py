"""The linear head on standardised pooled features."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearHead(nn.Module):
    """A linear layer on standardised features; for regression it predicts standardised targets.

    Buffers ``feature_mean``/``feature_std`` [D] and ``target_mean``/``target_std`` [] travel with the weights,
    so ``head.safetensors`` alone maps pooled features to predictions.
    """

    def __init__(
        self, mean: Tensor, std: Tensor, outputs: int, target_mean: float = 0.0, target_std: float = 1.0
    ) -> None:
        super().__init__()
        self.register_buffer("feature_mean", mean.float().clone())
        self.register_buffer("feature_std", std.float().clamp_min(1e-6).clone())
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.linear = nn.Linear(len(mean), outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor) -> Tensor:
        """Shapes: features [B, D] -> [B, outputs] (logits or standardised targets)."""
        return self.linear((features.float() - self.feature_mean) / self.feature_std)

    def predict(self, features: Tensor) -> Tensor:
        """Class indices [B] or targets in label units [B]."""
        out = self(features)
        if self.linear.out_features == 1:
            return out[:, 0] * self.target_std + self.target_mean
        return out.argmax(dim=1)


def head_for(task: str, features: Tensor, y: Tensor, num_classes: int) -> LinearHead:
    """A zero-initialised head standardising with ``features`` (and, for regression, ``y``)."""
    mean, std = features.mean(0), features.std(0, unbiased=False)
    if task == "classification":
        return LinearHead(mean, std, num_classes)
    return LinearHead(mean, std, 1, float(y.mean()), float(y.std(unbiased=False).clamp_min(1e-12)))
