"""Export an image-text run trained from scratch (mmssl's own ViT and text transformer) as an open_clip model.

The written folder has the layout of ``mmssl.export.open_clip`` (``open_clip_config.json``,
``open_clip_model.safetensors``, ``model_configs/``) plus the tokenizer files, so
``open_clip.create_model_and_transforms("local-dir:FOLDER")`` and ``open_clip.get_tokenizer("local-dir:FOLDER")``
load it without mmssl. Exactness:

- image: open_clip's ``VisionTransformer`` without ``ln_pre``; the class token's position row is zero (mmssl adds
  none); the patch convolution's bias, which open_clip lacks, is added to the patch positions; a greyscale
  encoder becomes an RGB one whose three filters are the grey filter times the ITU-R 601 luma weights (what mmssl's
  decoder does to an RGB image), with the grey mean/std on every channel;
- text: open_clip's ``TextTransformer`` in bidirectional mode. Its padding mask is built only with an appended class
  embedding, and then one position late (``correct_cls_mask`` cannot be set from a config). The export turns that
  into the exact mask: the tokenizer puts a ``[POOL]`` token first (embedding: mmssl's class token, position row
  zero) and pads with ``[SEP]``, the config's ``pad_id`` is ``[SEP]``'s id, so the late mask keeps exactly the real
  tokens and hides the appended class embedding. That embedding equals mmssl's class token too, so its output, which
  open_clip pools, is ``[POOL]``'s output at every layer: mmssl's pooled text feature;
- mmssl's projections become ``visual.proj`` / ``text_projection``; the CLIP objective's ``logit_scale`` comes along.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmssl.export.card import copy_report_figures, model_card
from mmssl.export.files import MARKER, write_folder
from mmssl.export.own_transformer import (
    BlockWeights,
    NotExportable,
    OwnTransformer,
    projection_matrix,
    read_patch_stem,
    read_transformer,
    read_word_stem,
)
from mmssl.export.tokenizer_files import save_tokenizer

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
MODEL_CONFIGS = "model_configs"
#: ITU-R BT.601 luma weights (R, G, B), as mmssl's image decoder turns RGB into grey.
LUMA_601 = (0.299, 0.587, 0.114)


def _blocks(prefix: str, blocks: tuple[BlockWeights, ...]) -> dict[str, Tensor]:
    state = {}
    for i, b in enumerate(blocks):
        p = f"{prefix}.resblocks.{i}."
        state.update({
            p + "ln_1.weight": b.norm1_weight, p + "ln_1.bias": b.norm1_bias,
            p + "attn.in_proj_weight": b.qkv_weight, p + "attn.in_proj_bias": b.qkv_bias,
            p + "attn.out_proj.weight": b.proj_weight, p + "attn.out_proj.bias": b.proj_bias,
            p + "ln_2.weight": b.norm2_weight, p + "ln_2.bias": b.norm2_bias,
            p + "mlp.c_fc.weight": b.fc1_weight, p + "mlp.c_fc.bias": b.fc1_bias,
            p + "mlp.c_proj.weight": b.fc2_weight, p + "mlp.c_proj.bias": b.fc2_bias,
        })  # fmt: skip
    return state


def find_pair(run: Any) -> tuple[str, str]:
    """The (image-like, text-like) modalities: own encoders with a ViT stem and with a word stem."""
    image, text = [], []
    for m, encoder in run.model.encoders.items():
        for found, read in ((image, read_patch_stem), (text, read_word_stem)):
            try:
                read_transformer(encoder, m)
                read(encoder, m)
                found.append(m)
            except NotExportable:
                pass
    if len(image) != 1 or len(text) != 1:
        raise NotExportable(
            "open_clip export needs one image tower and one text tower: released open_clip towers, or mmssl's own "
            f"ViT and text transformer trained from scratch; this run has own ViTs {image} and own text encoders {text}"
        )
    return image[0], text[0]


def _check_pool(vit: OwnTransformer, modality: str) -> None:
    if vit.pool != "cls" or vit.cls_token is None:
        raise NotExportable(
            f"modality {modality!r} pools the mean of its tokens; open_clip's towers pool a class token "
            "(train with options.pool: cls, or use --format timm / hf / torch_export)"
        )


def vision_tower(run: Any, m: str) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """(vision_cfg, state dict under ``visual.``, preprocess_cfg) of the own ViT of modality ``m``."""
    encoder = run.model.encoders[m]
    vit, stem = read_transformer(encoder, m), read_patch_stem(encoder, m)
    _check_pool(vit, m)
    processor = run.processors[m]
    mean, std = [float(x) for x in processor.mean], [float(x) for x in processor.std]
    weight = stem.conv_weight
    if stem.channels == 1:
        weight = torch.cat([weight * w for w in LUMA_601], dim=1)
        mean, std = mean * 3, std * 3
    elif stem.channels != 3:
        raise NotExportable(f"modality {m!r}: open_clip reads RGB images; the encoder has {stem.channels} channels")
    positions = torch.cat([torch.zeros(1, vit.width), stem.positions + stem.conv_bias[None]], dim=0)
    cfg = {
        "image_size": stem.image_size,
        "patch_size": stem.patch_size,
        "width": vit.width,
        "layers": vit.depth,
        "head_width": vit.width // vit.heads,
        "mlp_ratio": vit.mlp_hidden / vit.width,
        "no_ln_pre": True,
        "pool_type": "tok",
        "norm_kwargs": {"eps": vit.norm_eps},
    }
    state = {
        "visual.conv1.weight": weight,
        "visual.class_embedding": vit.cls_token,
        "visual.positional_embedding": positions,
        "visual.ln_post.weight": vit.norm_weight,
        "visual.ln_post.bias": vit.norm_bias,
        **_blocks("visual.transformer", vit.blocks),
    }
    projection = projection_matrix(run.model.projections[m], m)
    if projection is None:
        raise NotExportable(f"modality {m!r}: open_clip needs a linear projection (projection: identity given)")
    state["visual.proj"] = projection.T.contiguous()
    preprocess = {
        "size": stem.image_size,
        "mode": "RGB",
        "mean": mean,
        "std": std,
        "interpolation": "bilinear",
        "resize_mode": "shortest",
    }
    return cfg, state, preprocess


def text_tower(run: Any, m: str, folder: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(text_cfg, state dict) of the own text transformer of modality ``m``."""
    encoder = run.model.encoders[m]
    vit, stem = read_transformer(encoder, m), read_word_stem(encoder, m)
    _check_pool(vit, m)
    specials = run.processors[m].specials
    if specials.sep_id is None:
        raise NotExportable(f"modality {m!r}: its tokenizer has no separator token; open_clip export pads with it")
    cfg = {
        "context_length": stem.max_length + 1,
        "vocab_size": stem.vocab_size + 1,
        "hf_tokenizer_name": folder,
        "width": vit.width,
        "heads": vit.heads,
        "layers": vit.depth,
        "mlp_ratio": vit.mlp_hidden / vit.width,
        "embed_cls": True,
        "no_causal_mask": True,
        "pad_id": int(specials.sep_id),
        "pool_type": "last",
        "norm_kwargs": {"eps": vit.norm_eps},
    }
    projection = projection_matrix(run.model.projections[m], m)
    if projection is None:
        raise NotExportable(f"modality {m!r}: open_clip needs a linear projection (projection: identity given)")
    zero = torch.zeros(1, vit.width)
    state = {
        "token_embedding.weight": torch.cat([stem.word, vit.cls_token[None]], dim=0),  # [POOL] is the last id
        "positional_embedding": torch.cat([zero, stem.positions, zero], dim=0),
        "cls_emb": vit.cls_token,
        "ln_final.weight": vit.norm_weight,
        "ln_final.bias": vit.norm_bias,
        "text_projection": projection.T.contiguous(),
        **_blocks("transformer", vit.blocks),
    }
    return cfg, state


def _snippet(output: Path) -> str:
    return f"""import open_clip
import torch

model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{output}")
tokenizer = open_clip.get_tokenizer("local-dir:{output}")
model.eval()
with torch.no_grad():
    image_features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)
    text_features = model.encode_text(tokenizer(["a photo of a sneaker."]), normalize=True)"""


def export_open_clip_scratch(run: Any, run_dir: Path, output: Path, logit_terms: dict[str, Tensor]) -> Path:
    """Write the run's own image and text encoders as one open_clip CLIP model in ``output``."""
    import open_clip

    image, text = find_pair(run)
    vision_cfg, vision_state, preprocess = vision_tower(run, image)
    text_cfg, text_state = text_tower(run, text, str(output))
    name = f"mmssl-{run.plan.recipe.name}"
    model_cfg = {"embed_dim": int(run.model.embed_dim), "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    state = {**vision_state, **{f"text.{k}": v for k, v in text_state.items()}}
    state["logit_scale"] = logit_terms.get("logit_scale", torch.tensor(0.0)).detach().float().reshape(())
    if "logit_bias" in logit_terms:
        model_cfg["init_logit_bias"] = float(logit_terms["logit_bias"])
        state["logit_bias"] = logit_terms["logit_bias"].detach().float().reshape(1)
    clip = open_clip.model.CustomTextCLIP(**model_cfg)  # CLIP drops the text tower's cls_emb
    missing, unexpected = clip.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "logit_bias"]
    if missing or unexpected:
        raise NotExportable(f"open_clip export: weights do not fit open_clip's CLIP ({missing=} {unexpected=})")
    card_preprocessing = {
        image: {**preprocess, "input": "pixels [B, 3, H, W]"},
        text: {
            "tokenizer": f"open_clip.get_tokenizer('local-dir:{output}')",
            "context_length": text_cfg["context_length"],
        },
    }

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in clip.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        config = {"model_cfg": {**model_cfg, "custom_text": True}, "preprocess_cfg": preprocess}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / MODEL_CONFIGS).mkdir()
        (tmp / MODEL_CONFIGS / f"{name}.json").write_text(json.dumps(config["model_cfg"], indent=2) + "\n")
        specials = run.processors[text].specials
        pool_id = save_tokenizer(run.processors[text], tmp, text_cfg["context_length"], True, pad_token=specials.sep)
        if pool_id != text_cfg["vocab_size"] - 1:
            expected = text_cfg["vocab_size"] - 1
            raise NotExportable(f"open_clip export: the [POOL] token got id {pool_id}, not {expected}")
        info = {"format": "open_clip", "run": str(Path(run_dir).resolve()), "towers": [image, text]}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        card = model_card(run.plan.recipe, "open_clip", card_preprocessing, _snippet(output), run_dir)
        (tmp / "README.md").write_text(card)
        copy_report_figures(Path(run_dir), tmp)

    return write_folder(output, fill, MARKER)
