"""Export an own ViT encoder (image-like modality) as a timm ``VisionTransformer`` folder.

The folder is what ``timm.models.save_for_hf`` writes (``config.json`` with ``architecture``, ``model_args`` and
``pretrained_cfg`` holding input size, mean, std, interpolation; ``model.safetensors``), so
``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads it without mmssl. The run's projection into the
shared space is the classifier head (bias zero): ``model(x)`` is the shared-space embedding before L2
normalisation; ``model.reset_classifier(0)`` gives the pooled encoder features.

Exactness: mmssl's ViT adds no position to the class token (timm ``no_embed_class=True``), uses fixed
sine-cosine positions (stored as timm's ``pos_embed``), LayerNorm eps 1e-6 and exact GELU, as timm does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from mmssl.export.card import copy_report_figures, model_card
from mmssl.export.files import MARKER, write_folder
from mmssl.export.formats import register_export_format
from mmssl.export.own_transformer import (
    NotExportable,
    OwnTransformer,
    PatchStem,
    projection_matrix,
    read_patch_stem,
    read_transformer,
)
from mmssl.export.pick import pick_modality

#: A registered timm ViT whose builder takes every size from ``model_args``.
ARCHITECTURE = "vit_base_patch16_224"


def _read_vit(encoder: Any, modality: str) -> tuple[OwnTransformer, PatchStem]:
    return read_transformer(encoder, modality), read_patch_stem(encoder, modality)


def _read_image_encoder(encoder: Any, modality: str) -> Any:
    """An own ViT (``(OwnTransformer, PatchStem)``) or a timm model (``nn.Module``) with its own pooling."""
    model = getattr(encoder, "model", None)
    if model is not None and hasattr(model, "pretrained_cfg") and hasattr(model, "reset_classifier"):
        if getattr(encoder, "pooling", "default") != "default":
            raise NotExportable(
                f"modality {modality!r}: encoder.pooling {encoder.pooling!r} is not the timm model's own pooling; "
                "train with pooling: default, or use --format torch_export"
            )
        return model
    return _read_vit(encoder, modality)


def timm_model_args(vit: OwnTransformer, stem: PatchStem, num_classes: int) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments of the same architecture."""
    if vit.norm_eps != 1e-6:
        raise NotExportable(f"timm's ViT uses LayerNorm eps 1e-6; this encoder uses {vit.norm_eps}")
    return {
        "img_size": stem.image_size,
        "patch_size": stem.patch_size,
        "in_chans": stem.channels,
        "embed_dim": vit.width,
        "depth": vit.depth,
        "num_heads": vit.heads,
        "mlp_ratio": vit.mlp_hidden / vit.width,
        "qkv_bias": True,
        "class_token": vit.cls_token is not None,
        "no_embed_class": True,
        "global_pool": "token" if vit.pool == "cls" else "avg",
        "fc_norm": False,
        "num_classes": num_classes,
    }


def timm_state_dict(vit: OwnTransformer, stem: PatchStem, head: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The weights under timm ``VisionTransformer`` names. Shapes: head [E, D] or None (no head)."""
    state = {
        "patch_embed.proj.weight": stem.conv_weight,
        "patch_embed.proj.bias": stem.conv_bias,
        "pos_embed": stem.positions[None],
        "norm.weight": vit.norm_weight,
        "norm.bias": vit.norm_bias,
    }
    if vit.cls_token is not None:
        state["cls_token"] = vit.cls_token.reshape(1, 1, -1)
    for i, b in enumerate(vit.blocks):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": b.norm1_weight, p + "norm1.bias": b.norm1_bias,
            p + "attn.qkv.weight": b.qkv_weight, p + "attn.qkv.bias": b.qkv_bias,
            p + "attn.proj.weight": b.proj_weight, p + "attn.proj.bias": b.proj_bias,
            p + "norm2.weight": b.norm2_weight, p + "norm2.bias": b.norm2_bias,
            p + "mlp.fc1.weight": b.fc1_weight, p + "mlp.fc1.bias": b.fc1_bias,
            p + "mlp.fc2.weight": b.fc2_weight, p + "mlp.fc2.bias": b.fc2_bias,
        })  # fmt: skip
    if head is not None:
        state["head.weight"] = head
        state["head.bias"] = torch.zeros(head.shape[0])
    return state


def image_preprocessing(processor: Any, stem: PatchStem) -> dict[str, Any]:
    """The run's image preprocessing as timm ``pretrained_cfg`` entries."""
    return {
        "input_size": [stem.channels, stem.image_size, stem.image_size],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [float(m) for m in processor.mean],
        "std": [float(s) for s in processor.std],
        "fixed_input_size": True,
    }


def _snippet(output: Path) -> str:
    return f"""import timm
import torch.nn.functional as F

model = timm.create_model("local-dir:{output}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)  # input size, mean, std of the training run
transform = timm.data.create_transform(**config)
embedding = F.normalize(model(transform(image).unsqueeze(0)), dim=-1)  # the run's shared space
# model.reset_classifier(0) gives the pooled encoder features instead
# or by architecture name, with config.json's model_args and pretrained_cfg:
#   timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
#                     pretrained_cfg_overlay=dict(config["pretrained_cfg"], file="{output}/model.safetensors"))"""


@register_export_format("timm", per_modality=True)
def export_timm(run_dir: Path, output: Path, modality: str | None = None, trust_plugins: bool = False) -> Path:
    """Write the run's own ViT encoder of ``modality`` (default: the only one) as a timm model folder.

    Raises:
        NotExportable: No modality (or ``modality``) is an own ViT.
    """
    import timm
    from timm.models import save_for_hf

    from mmssl.run import load_run

    run_dir, output = Path(run_dir), Path(output)
    run = load_run(run_dir, trust_plugins=trust_plugins)
    m, found = pick_modality(run, modality, _read_image_encoder, "timm")
    head = projection_matrix(run.model.projections[m], m)
    num_classes = 0 if head is None else head.shape[0]
    if isinstance(found, tuple):  # an own ViT: rebuilt as timm's VisionTransformer
        vit, stem = found
        architecture, args = ARCHITECTURE, timm_model_args(vit, stem, num_classes)
        preprocessing = image_preprocessing(run.processors[m], stem)
        model = timm.create_model(ARCHITECTURE, pretrained=False, **args)
        model.load_state_dict(timm_state_dict(vit, stem, head), strict=True)
    else:  # a timm model (released or from random init): its weights, the run's projection as its head
        spec = run.plan.recipe.modalities[m].encoder
        architecture, args = spec.model, {**spec.kwargs, "num_classes": num_classes}
        model = copy.deepcopy(found).cpu().eval()
        model.reset_classifier(num_classes)
        if head is not None:
            classifier = model.get_classifier()
            classifier.weight.data.copy_(head)
            classifier.bias.data.zero_()
        size = int(run.processors[m].options.image_size)
        channels = int(run.processors[m].options.channels)
        preprocessing = image_preprocessing(run.processors[m], PatchStem(channels, 0, size, *([torch.empty(0)] * 3)))
    cfg = {**model.pretrained_cfg, **preprocessing, "architecture": architecture, "num_classes": num_classes}
    drop = ("hf_hub_id", "url", "file", "source", "tag", "license", "paper_ids", "origin_url", "test_input_size")
    for key in (*drop, "test_crop_pct"):
        cfg.pop(key, None)
    model.pretrained_cfg = cfg

    def fill(tmp: Path) -> None:
        save_for_hf(model, str(tmp), model_args=args, safe_serialization=True)
        info = {"format": "timm", "modality": m, "run": str(run_dir.resolve()), "normalize": True}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        card = model_card(run.plan.recipe, "timm", {m: preprocessing}, _snippet(output), run_dir)
        (tmp / "README.md").write_text(card)
        copy_report_figures(Path(run_dir), tmp)

    return write_folder(output, fill, MARKER)
