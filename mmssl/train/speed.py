"""Memory and speed knobs for encoders: activation checkpointing (``train.activation_checkpointing``) and
``torch.compile`` (``train.compile``).

Both act on the encoder modules in place, so parameter names (checkpoints, exports) do not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from mmssl.encoders.adapt import layer_stack


def checkpoint_blocks(encoder: nn.Module, modality: str) -> int:
    """Recompute each block of ``encoder`` in the backward pass instead of keeping its activations.

    Non-reentrant ``torch.utils.checkpoint`` with the RNG state preserved, so dropout replays identically and
    the gradients equal those without checkpointing. Returns the number of blocks wrapped.

    Raises:
        ValueError: The encoder exposes no blocks (``layer_stack``).
    """
    _, blocks = layer_stack(encoder)
    if not blocks:
        raise ValueError(
            f"train.activation_checkpointing: the encoder of modality {modality!r} ({type(encoder).__name__}) "
            "exposes no blocks (layer_stack), so there is nothing to checkpoint"
        )
    for block in blocks:
        if getattr(block, "_mmssl_checkpointed", False):
            continue
        forward = block.forward

        def run(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = run
        block._mmssl_checkpointed = True
    return len(blocks)


def checkpointed_modalities(setting: bool | list[str], modalities: Iterable[str]) -> list[str]:
    """Which modalities ``train.activation_checkpointing`` names (``true``: all). Raises on an unknown name."""
    modalities = list(modalities)
    if setting is True:
        return modalities
    if setting is False:
        return []
    unknown = [m for m in setting if m not in modalities]
    if unknown:
        raise ValueError(f"train.activation_checkpointing names {unknown}, not modalities of the recipe {modalities}")
    return list(setting)


def apply_speed_options(
    encoders: dict[str, nn.Module], activation_checkpointing: bool | list[str], compile: bool
) -> None:
    """Activation checkpointing on the named encoders, then ``nn.Module.compile`` (in place) on every encoder."""
    for modality in checkpointed_modalities(activation_checkpointing, encoders):
        checkpoint_blocks(encoders[modality], modality)
    if compile:
        for encoder in encoders.values():
            encoder.compile()
