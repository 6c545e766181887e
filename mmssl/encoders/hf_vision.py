"""Hugging Face vision encoders (ViT, DeiT, DINOv2, BEiT, ... any ``AutoModel`` with ``num_channels`` and
``image_size`` in its config) behind mmssl's encoder interface.

The image plugin feeds normalised pixels [B, 3, H, W] (``pixel_values``). Its preprocessing (resize the shorter
side, centre crop, ``/255``, per-channel mean/std) matches the model's image processor for square images; for
other aspect ratios the processor of plain ViT squashes the image where the plugin crops it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmssl.encoders.base import Preprocessing, Released, ReleasedError, find_blocks, refuse_keep
from mmssl.modality import EncoderOutput, ModalityBatch

#: Used when the folder has no image processor: the normalisation of Google's ViT checkpoints.
FALLBACK_MEAN = [0.5, 0.5, 0.5]
FALLBACK_STD = [0.5, 0.5, 0.5]


def _side(value: Any) -> int | None:
    """The side of a square from an image processor's ``size`` / ``crop_size`` (int or dict)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if value.get(key):
                return int(value[key])
    return None


def image_preprocessing(path: str, config: Any) -> tuple[Preprocessing, dict[str, Any]]:
    """Image size and mean/std from the folder's image processor (``preprocessor_config.json``).

    Falls back to ``config.image_size`` and mean = std = 0.5 when the folder has none.

    Returns:
        The ``Preprocessing`` and the processor settings (for the exporter).
    """
    settings: dict[str, Any] = {}
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(path)
        settings = {
            key: getattr(processor, key, None)
            for key in ("size", "crop_size", "do_center_crop", "image_mean", "image_std", "do_normalize")
        }
    except Exception:  # no preprocessor_config.json (OSError), or a processor class that cannot be built
        file = Path(path) / "preprocessor_config.json"
        if file.is_file():
            settings = json.loads(file.read_text())
    side = _side(settings.get("crop_size")) if settings.get("do_center_crop") else None
    side = side or _side(settings.get("size")) or int(config.image_size)
    if settings.get("do_normalize", True) is False:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    else:
        mean = [float(m) for m in (settings.get("image_mean") or FALLBACK_MEAN)]
        std = [float(s) for s in (settings.get("image_std") or FALLBACK_STD)]
    if len(mean) != 3 or len(std) != 3:
        raise ReleasedError(f"encoder.path {path!r}: image processor mean {mean} / std {std} are not RGB")
    patch = getattr(config, "patch_size", None)
    patch = int(patch[0] if isinstance(patch, list | tuple) else patch) if patch else None
    preprocessing = Preprocessing(input="pixels", image_size=side, patch_size=patch, mean=mean, std=std)
    exported = {k: v for k, v in settings.items() if isinstance(v, int | float | str | bool | list | dict)}
    return preprocessing, exported


class HFVisionEncoder(nn.Module):
    """A transformers vision model reading the image plugin's [B, C, H, W] batches.

    Args:
        model: An ``AutoModel`` whose output has ``last_hidden_state`` [B, P + N, D] (P prefix tokens: class,
            distillation or register tokens; N patch tokens).
        pooling: ``cls`` (the class token, after the final norm) or ``mean`` (of the patch tokens).
        patch_size: Side of a patch, to count the patch tokens (None: every token after the first is a patch).
    """

    def __init__(self, model: nn.Module, pooling: str, patch_size: int | None) -> None:
        super().__init__()
        self.model = model
        self.width = int(model.config.hidden_size)
        self.pooling = pooling
        self.patch_size = patch_size

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: data [B, C, H, W] -> tokens [B, N, D] (patch tokens, in patch order), pooled [B, D]."""
        refuse_keep(batch, "a transformers vision encoder")
        pixels: Tensor = batch.data
        if not isinstance(pixels, Tensor) or pixels.ndim != 4:
            raise ReleasedError(f"a transformers vision encoder reads [B, C, H, W] pixels, got {type(pixels)}")
        hidden = self.model(pixel_values=pixels).last_hidden_state
        if self.patch_size:
            patches = (pixels.shape[-2] // self.patch_size) * (pixels.shape[-1] // self.patch_size)
            prefix = hidden.shape[1] - patches
        else:
            prefix = 1
        tokens = hidden[:, prefix:]
        pooled = hidden[:, 0] if self.pooling == "cls" and prefix > 0 else tokens.mean(1)
        return EncoderOutput(tokens=tokens, pooled=pooled)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        embeddings = getattr(self.model, "embeddings", None)
        blocks = find_blocks(self.model, self.model.config.num_hidden_layers)
        return ([embeddings] if embeddings is not None else []), blocks


def vision_encoder(model: nn.Module, path: str, spec: Any, export: dict[str, Any]) -> Released:
    """Wrap a transformers vision ``AutoModel`` loaded from ``path`` (called by ``load_transformers``)."""
    config = model.config
    pooling = "cls" if spec.pooling == "default" else spec.pooling
    preprocessing, processor = image_preprocessing(path, config)
    encoder = HFVisionEncoder(model, pooling, preprocessing.patch_size)
    export = {
        **export,
        "modality": "vision",
        "architecture": type(model).__name__,
        "config": config.to_dict(),
        "pooling": pooling,
        "image_processor": processor,
        "preprocessing": preprocessing.to_json(),
    }
    return Released(encoder, preprocessing, "transformers", export)
