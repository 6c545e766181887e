"""How a released encoder trains: in full, frozen (LiT-style), or through LoRA adapters (``peft``).

LoRA layers are injected in place (``peft.inject_adapter_in_model``), so any ``nn.Module`` works: transformers,
open_clip and timm alike. ``merge_lora`` folds them back into plain linear layers for export.
"""

from __future__ import annotations

from torch import nn

from mmssl.encoders.base import ReleasedError


def layer_stack(encoder: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(stem, blocks)`` of an encoder that exposes ``layer_stack()``; ``([], [])`` otherwise."""
    method = getattr(encoder, "layer_stack", None)
    return method() if callable(method) else ([], [])


def apply_training_mode(encoder: nn.Module, mode: str, lora: object | None = None, where: str = "encoder") -> None:
    """Freeze ``encoder``, leave it trainable, or inject LoRA adapters as ``lora`` (a ``LoraSpec``) asks.

    Raises:
        ReleasedError: ``target_modules`` match no linear layer, or more blocks are unfrozen than exist.
    """
    if mode == "full":
        encoder.requires_grad_(True)
        return
    encoder.requires_grad_(False)
    if mode == "frozen":
        return
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
    try:
        inject_adapter_in_model(config, encoder)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)})
        raise ReleasedError(
            f"{where}.lora.target_modules {lora.target_modules}: {err}. Linear layer names here: {names}"
        ) from err
    for name, param in encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    if lora.unfreeze_last_blocks:
        _, blocks = layer_stack(encoder)
        if lora.unfreeze_last_blocks > len(blocks):
            raise ReleasedError(
                f"{where}.lora.unfreeze_last_blocks is {lora.unfreeze_last_blocks} but the encoder has "
                f"{len(blocks)} blocks"
            )
        for block in blocks[-lora.unfreeze_last_blocks :]:
            block.requires_grad_(True)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer in ``module`` into its base layer, in place; returns ``module``.

    The result has the architecture (and state-dict keys) of the released model again.
    """
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
    return module


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"total": ..., "trainable": ...}`` parameter counts."""
    params = list(module.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }
