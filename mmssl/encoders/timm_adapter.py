"""timm image encoders (ViTs, DeiT, EVA, ... and CNNs) behind mmssl's encoder interface.

``timm.create_model(model, pretrained=False, **kwargs)`` builds the architecture; the weights come only from
``encoder.path`` (a ``.safetensors`` file, or a torch file read with ``weights_only=True``), so nothing is
downloaded. Preprocessing (input size, mean, std) comes from ``timm.data.resolve_data_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator
from torch import Tensor, nn

from mmssl.encoders.base import (
    Preprocessing,
    Released,
    ReleasedError,
    refuse_keep,
    register_encoder_library,
    resolve_path,
)
from mmssl.encoders.checkpoint import read_state_dict
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.recipe import EncoderSpec


class _Parameters(nn.Module):
    """Holds existing parameters (class token, positions) so they can be listed as a stem module."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, param in params.items():
            self.register_parameter(name, param)


class TimmEncoder(nn.Module):
    """A timm model reading the image plugin's [B, C, H, W] batches.

    Args:
        model: A timm model (``forward_features``, ``forward_head``, ``num_features``).
        pooling: ``default`` (the model's own head pooling, ``forward_head(pre_logits=True)``), ``cls`` (first
            prefix token) or ``mean`` (of the patch tokens).
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.width = int(model.num_features)
        self.pooling = pooling
        self.prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        if pooling == "cls" and self.prefix == 0:
            raise ReleasedError(f"encoder.pooling cls: timm model {type(model).__name__} has no class token")

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: data [B, C, H, W] -> tokens [B, N, D] (patch tokens or CNN positions), pooled [B, D]."""
        refuse_keep(batch, "a timm encoder")
        pixels = batch.data
        if not isinstance(pixels, Tensor) or pixels.ndim != 4:
            raise ReleasedError(f"a timm encoder reads [B, C, H, W] pixels, got {type(pixels).__name__}")
        features = self.model.forward_features(pixels)
        if features.ndim == 4:  # feature map: [B, D, h, w] (CNNs) or [B, h, w, D] (Swin-like, output_fmt NHWC)
            nhwc = str(getattr(self.model, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC")
            tokens = features.flatten(1, 2) if nhwc else features.flatten(2).transpose(1, 2)
        else:
            tokens = features[:, self.prefix :]
        if self.pooling == "cls":
            pooled = features[:, 0]
        elif self.pooling == "mean":
            pooled = tokens.mean(1)
        else:
            pooled = self.model.forward_head(features, pre_logits=True)
        return EncoderOutput(tokens=tokens, pooled=pooled)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        model = self.model
        stem: list[nn.Module] = []
        for name in ("patch_embed", "stem", "conv1"):
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                stem.append(module)
                break
        params = {
            name: getattr(model, name)
            for name in ("cls_token", "reg_token", "pos_embed", "dist_token")
            if isinstance(getattr(model, name, None), nn.Parameter)
        }
        if params:
            stem.append(_Parameters(params))
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            stages = getattr(model, "stages", None)
            blocks = stages if stages is not None else getattr(model, "layers", [])
        return stem, list(blocks)


class TimmOptions(EncoderSpec):
    """``library: timm``: a timm architecture built without weights, then loaded from ``path`` (or trained from
    random initialisation: ``init: random``, no ``path``)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(
        None, description="A checkpoint file (.safetensors, or a torch file read with weights_only=True)."
    )
    model: str = Field(description="timm architecture name (e.g. vit_small_patch16_224).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments of create_model.")

    @model_validator(mode="after")
    def _weights(self) -> TimmOptions:
        if self.init == "random" and self.path is not None:
            raise ValueError("init: random with timm loads no weights: drop `path`")
        if self.init == "released" and self.path is None:
            raise ValueError("give `path` (a checkpoint file), or init: random to train the architecture from scratch")
        return self


@register_encoder_library("timm", TimmOptions)
def load_timm(spec: Any, base_dir: Path) -> Released:
    """Build ``spec.model`` with timm (``pretrained=False``) and load the weights of ``spec.path`` (none with
    ``init: random``: the architecture trains from timm's random initialisation, fed by the plugin's own
    preprocessing)."""
    import timm
    from timm.data import resolve_data_config

    random = spec.init == "random"
    if spec.path is None and not random:
        raise ReleasedError("library timm needs `path`: a .safetensors or torch checkpoint file (or init: random)")
    path = None if random else resolve_path(spec.path, base_dir)
    state = None if random else read_state_dict(path)
    try:
        model = timm.create_model(spec.model, pretrained=False, **spec.kwargs)
    except Exception as err:  # unknown model name (RuntimeError), bad kwargs (TypeError)
        raise ReleasedError(
            f"encoder.model {spec.model!r} with kwargs {spec.kwargs}: timm cannot build it: {err}"
        ) from err
    try:
        if state is not None:
            model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ReleasedError(
            f"encoder.path {path!r} does not fit timm model {spec.model!r} with kwargs {spec.kwargs} "
            f"(give the kwargs it was trained with, e.g. img_size, num_classes): {err}"
        ) from err
    config = resolve_data_config({}, model=model)
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if built:  # the pretrained config names the default size, not the one img_size= built the model for
        config["input_size"] = (config["input_size"][0], *tuple(built))
    channels, height, width = config["input_size"]
    if not random and (channels != 3 or height != width):
        raise ReleasedError(
            f"timm model {spec.model!r}: input {config['input_size']}; the image plugin feeds square RGB images"
        )
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = int(patch[0] if isinstance(patch, list | tuple) else patch) if patch else None
    preprocessing = Preprocessing(
        input="pixels",
        image_size=int(height),
        patch_size=patch,
        mean=[float(m) for m in config["mean"]],
        std=[float(s) for s in config["std"]],
    )
    encoder = TimmEncoder(model, spec.pooling)
    export = {
        "model": spec.model,
        "kwargs": dict(spec.kwargs),
        "path": path,
        "pooling": spec.pooling,
        "init": spec.init,
        "num_prefix_tokens": encoder.prefix,
        "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
        "preprocessing": preprocessing.to_json(),
    }
    return Released(encoder, preprocessing, "timm", export)
