"""An encoder library: a small convolutional encoder whose weights are a safetensors file.

A recipe names it as ``modalities.<m>.encoder: {library: tinyconv, path: weights.safetensors, kwargs: {...}}``, or
with ``pretrained: none`` instead of a path for weights initialised from a fixed seed (torchvision's
``weights=None``); ``python -m mmssl_components.tinyconv weights.safetensors`` writes such weights to a file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from mmssl.encoders.base import Preprocessing, Released, ReleasedError, register_encoder_library, resolve_path
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.recipe import EncoderSpec

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


class TinyConv(nn.Module):
    """``depth`` stride-2 conv blocks; each output position is a token.

    Args:
        width: Channels of every block (the token width D).
        depth: Blocks (each halves the side).
        image_size: Side of the square input.
    """

    def __init__(self, width: int = 32, depth: int = 2, image_size: int = 16) -> None:
        super().__init__()
        self.width, self.image_size = width, image_size
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GroupNorm(1, width), nn.GELU())
            for _ in range(depth)
        )

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: data [B, 3, S, S] -> tokens [B, (S / 2^depth)^2, D], pooled [B, D]."""
        if batch.keep is not None:
            raise ReleasedError("a tinyconv encoder sees every pixel and cannot drop hidden tokens")
        x = self.stem(batch.data)
        for block in self.blocks:
            x = block(x)
        tokens = x.flatten(2).transpose(1, 2)
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return [self.stem], list(self.blocks)


class TinyConvOptions(EncoderSpec):
    """``library: tinyconv``: weights from ``path``, or ``pretrained: none`` for a seeded init."""

    model_config = ConfigDict(extra="forbid")
    pretrained: Literal["none"] | None = Field(None, description="`none`: weights initialised from a fixed seed.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="TinyConv(width=, depth=, image_size=).")

    @model_validator(mode="after")
    def _weights(self) -> TinyConvOptions:
        if (self.path is None) == (self.pretrained is None):
            raise ValueError("give either `path` (a safetensors file) or `pretrained: none`")
        return self


@register_encoder_library("tinyconv", TinyConvOptions, drops_tokens=False, exposes_layers=True)
def load_tinyconv(spec: Any, base_dir: Path) -> Released:
    """Build ``TinyConv(**spec.kwargs)`` with the weights of ``spec.path`` (or seeded ones: ``pretrained: none``)."""
    if spec.path is None:
        return released(seeded(**spec.kwargs))
    path = Path(resolve_path(spec.path, base_dir))
    if not path.is_file():
        raise ReleasedError(f"encoder.path {spec.path!r}: {path} is not a file")
    model = TinyConv(**spec.kwargs)
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise ReleasedError(f"encoder.path {spec.path!r}: weights do not fit TinyConv({spec.kwargs}): {err}") from err
    return released(model)


def released(model: TinyConv) -> Released:
    preprocessing = Preprocessing(input="pixels", image_size=model.image_size, mean=MEAN, std=STD)
    return Released(model, preprocessing, "tinyconv")


def seeded(seed: int = 0, **kwargs: Any) -> TinyConv:
    """``TinyConv(**kwargs)`` initialised from ``seed`` without touching the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyConv(**kwargs)


def save_weights(path: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Write the weights of ``seeded(seed, **kwargs)`` to ``path``."""
    save_file(seeded(seed, **kwargs).state_dict(), str(path))
    return Path(path)


if __name__ == "__main__":
    save_weights(sys.argv[1])
