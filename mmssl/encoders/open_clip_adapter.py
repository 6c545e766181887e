"""open_clip towers: the image tower (``model.visual``) or the text tower of a CLIP model, one per modality.

``encoder.path`` is a checkpoint of the whole CLIP model in open_clip's own format (``.safetensors``, or a torch
file read with ``weights_only=True``); ``encoder.pretrained`` names one of open_clip's pretrained tags instead.
Each tower keeps only its own weights; the exporter (``mmssl.export.open_clip``) rebuilds the whole model.

The image tower reads the image plugin's normalised pixels [B, 3, H, W]; the text tower the text plugin's token
ids, from a ``tokenizers`` equivalent of open_clip's tokenizer (written to the mmssl cache folder). Both return
the tower's projected CLIP embedding as ``pooled`` (so ``width`` is the CLIP embedding width) and their token
features projected the same way as ``tokens``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
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

#: ``create_model`` arguments that change the model config (the rest of its named arguments do not).
_CONFIG_OVERRIDES = {
    "force_quick_gelu": ("quick_gelu", None),
    "force_patch_dropout": ("patch_dropout", "vision_cfg"),
    "force_image_size": ("image_size", "vision_cfg"),
    "force_context_length": ("context_length", "text_cfg"),
    "force_custom_text": ("custom_text", None),
}
MASK_TOKEN = "<mask>"


def cache_root() -> Path:
    """The mmssl cache folder: ``$MMSSL_CACHE`` or ``~/.cache/mmssl``."""
    return Path(os.environ.get("MMSSL_CACHE", Path.home() / ".cache" / "mmssl"))


# -- loading ---------------------------------------------------------------------------------------------------


def final_model_config(name: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The model config ``create_model(name, **kwargs)`` builds: the registered one with the overrides applied."""
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        return None
    known = set(_signature_names(open_clip.create_model))
    for key, value in kwargs.items():
        if key in _CONFIG_OVERRIDES:
            if value is None or value is False:
                continue
            field, section = _CONFIG_OVERRIDES[key]
            (config[section] if section else config)[field] = value
        elif key not in known:  # a model constructor argument: create_model passes it on
            config[key] = value
    return config


def _signature_names(function: Any) -> list[str]:
    import inspect

    return [p.name for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]


def create_clip(spec: Any, base_dir: Path) -> tuple[nn.Module, str | None]:
    """The whole open_clip model of ``spec`` with its weights, and the resolved checkpoint path (or None)."""
    import open_clip

    path = resolve_path(spec.path, base_dir) if spec.path else None
    try:
        model = open_clip.create_model(spec.model, pretrained=None if path else spec.pretrained, **spec.kwargs)
    except Exception as err:  # unknown name (RuntimeError), bad kwargs (TypeError), download failure, ...
        raise ReleasedError(
            f"open_clip could not create model {spec.model!r} (pretrained={spec.pretrained!r}, kwargs={spec.kwargs}): "
            f"{err}"
        ) from err
    if path:
        state = read_state_dict(path)
        own = model.state_dict()
        if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].shape != own["logit_scale"].shape:
            state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
        if "logit_bias" in state and own.get("logit_bias") is not None:
            state["logit_bias"] = state["logit_bias"].reshape(own["logit_bias"].shape)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ReleasedError(
                f"encoder.path {path!r} does not fit open_clip model {spec.model!r} (kwargs {spec.kwargs}): {err}"
            ) from err
    return model.float().eval(), path


# -- towers ----------------------------------------------------------------------------------------------------


class _Params(nn.Module):
    """Loose parameters (class token, positions) as a module, for ``layer_stack``; never attached to the tower."""

    def __init__(self, *params: nn.Parameter | None) -> None:
        super().__init__()
        self.params = nn.ParameterList([p for p in params if isinstance(p, nn.Parameter)])


def _project(x: Tensor, projection: Any) -> Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection


class OpenClipImageTower(nn.Module):
    """``model.visual`` of an open_clip model, reading the image plugin's [B, 3, H, W] batches.

    Args:
        visual: The vision tower (a ``VisionTransformer``; other towers give one token, the pooled one).
        width: Its output width (the CLIP embedding width).
    """

    def __init__(self, visual: nn.Module, width: int) -> None:
        super().__init__()
        self.visual = visual
        self.width = width

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: data [B, 3, H, W] -> tokens [B, N, E] (patch tokens after the final norm, projected),
        pooled [B, E] (exactly ``model.encode_image``)."""
        refuse_keep(batch, "an open_clip image tower")
        pixels = batch.data
        if not isinstance(pixels, Tensor) or pixels.ndim != 4:
            raise ReleasedError(f"an open_clip image tower reads [B, 3, H, W] pixels, got {type(pixels).__name__}")
        visual = self.visual
        if _is_vit(visual):
            x = visual.transformer(visual._embeds(pixels))
            pooled, tokens = visual._pool(x)
            proj = visual.proj
            return EncoderOutput(tokens=_project(tokens, proj), pooled=_project(pooled, proj))
        pooled = visual(pixels)
        return EncoderOutput(tokens=pooled.unsqueeze(1), pooled=pooled)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        visual = self.visual
        if _is_vit(visual):
            stem = [_Params(visual.class_embedding, visual.positional_embedding), visual.conv1, visual.ln_pre]
            return stem, list(visual.transformer.resblocks)
        return [], []


def _is_vit(visual: nn.Module) -> bool:
    from open_clip.transformer import VisionTransformer

    return isinstance(visual, VisionTransformer)


class OpenClipTextTower(nn.Module):
    """The text tower of an open_clip model (``model.encode_text``), reading the text plugin's ``{"ids"}``.

    Its parameters keep open_clip's names (``token_embedding``, ``positional_embedding``, ``transformer``,
    ``ln_final``, ``text_projection``), so its state dict is the model's text part (under ``text.`` for models
    with a custom text tower).

    Args:
        parts: The module holding those attributes: the ``CLIP`` model itself, or its ``text`` tower.
        pool_type: ``argmax`` (the EOT token: the highest id), ``eos``, ``first`` or ``last``.
        eos_id: The EOS id (``eos`` pooling).
        pad_id: The id open_clip pads with (0 for its default tokenizer).
        width: Output width (the CLIP embedding width).
    """

    def __init__(self, parts: nn.Module, pool_type: str, eos_id: int | None, pad_id: int, width: int) -> None:
        super().__init__()
        self.token_embedding = parts.token_embedding
        self.positional_embedding = parts.positional_embedding
        self.transformer = parts.transformer
        self.ln_final = parts.ln_final
        self.text_projection = parts.text_projection
        mask = parts.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.context_length = int(self.positional_embedding.shape[0])
        self.vocab_size = int(self.token_embedding.num_embeddings)
        self.width = width

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: ids [B, L] -> tokens [B, L, E] (after ``ln_final``, projected), pooled [B, E].

        ``pooled`` equals ``model.encode_text`` of the same ids padded with open_clip's pad id to the context
        length: with the causal mask, the tokens up to the EOT never see the padding, so the padding the text
        plugin adds (or none) gives the same result.
        """
        refuse_keep(batch, "an open_clip text tower")
        ids: Tensor = batch.data["ids"]
        b, length = ids.shape
        if length > self.context_length:
            raise ReleasedError(
                f"an open_clip text tower takes at most {self.context_length} tokens, got {length}; "
                "lower the text options' max_length"
            )
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ReleasedError(
                f"token id {int(ids.max())} is outside the open_clip vocabulary ({self.vocab_size}): the tokenizer's "
                f"{MASK_TOKEN} token has no embedding; masked language modelling (mlm) cannot train this tower"
            )
        padding = batch.padding_mask
        if padding is not None:
            ids = ids.masked_fill(padding, self.pad_id)  # open_clip's own padding
        short = self.attn_mask is not None and self.pool_type in ("argmax", "eos", "first")
        run = ids if short else torch.cat([ids, ids.new_full((b, self.context_length - length), self.pad_id)], 1)
        n = run.shape[1]
        x = self.token_embedding(run) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:n, :n]
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        rows = torch.arange(b, device=ids.device)
        if self.pool_type == "argmax":
            pooled = x[rows, run.argmax(-1)]
        elif self.pool_type == "eos":
            pooled = x[rows, (run == self.eos_id).int().argmax(-1)]
        elif self.pool_type == "first":
            pooled = x[:, 0]
        else:  # last
            pooled = x[:, -1]
        tokens = _project(x[:, :length], self.text_projection)
        return EncoderOutput(
            tokens=tokens, pooled=_project(pooled, self.text_projection), padding_mask=batch.padding_mask
        )

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return [self.token_embedding, _Params(self.positional_embedding)], list(self.transformer.resblocks)


# -- tokenizer -------------------------------------------------------------------------------------------------


def clip_tokenizer_folder(simple: Any, context_length: int) -> str:
    """A folder with a ``tokenizer.json`` that tokenizes as open_clip's ``SimpleTokenizer`` (cached by content).

    The ``tokenizers`` pipeline: NFC, whitespace collapsed and stripped, lower case (``clean='lower'``), CLIP's
    split pattern, byte-level BPE with the ``</w>`` end-of-word suffix and ``<start_of_text> ... <end_of_text>``
    around each text. ``ftfy.fix_text`` and HTML unescaping (which open_clip also applies) are not reproduced:
    texts with mojibake or HTML entities may tokenize differently. The folder's ``tokenizer_config.json`` names
    ``<end_of_text>`` as pad token and an extra ``<mask>`` token (id = vocabulary size) as mask token; the text
    plugin needs both.

    Raises:
        ReleasedError: The tokenizer uses a cleaning mode or options this conversion does not reproduce.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if getattr(simple, "reduction_fn", None) is not None:
        raise ReleasedError("open_clip tokenizers with a reduction_mask cannot be converted for the text plugin")
    clean = getattr(getattr(simple, "clean_fn", None), "__name__", "_clean_lower")
    if clean not in ("_clean_lower", "_clean_whitespace"):
        raise ReleasedError(f"open_clip tokenizer cleaning {clean.removeprefix('_clean_')!r} is not supported")
    vocab = dict(simple.encoder)
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    sot, eot = simple.decoder[simple.sot_token_id], simple.decoder[simple.eot_token_id]
    key = hashlib.sha1(
        json.dumps([sorted(vocab.items()), merges[:: max(1, len(merges) // 997)], clean, context_length]).encode()
    ).hexdigest()[:16]
    folder = cache_root() / "open_clip" / f"tokenizer-{key}"
    if (folder / "tokenizer.json").is_file():
        return str(folder)

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    )
    steps = [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    if clean == "_clean_lower":
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)
    pattern = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    specials = [simple.decoder[i] for i in simple.all_special_ids]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}",
        pair=f"{sot} $A {eot} $B:1 {eot}:1",
        special_tokens=[(sot, vocab[sot]), (eot, vocab[eot])],
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": sot,
        "eos_token": eot,
        "pad_token": eot,
        "mask_token": MASK_TOKEN,
        "model_max_length": context_length,
        "additional_special_tokens": [t for t in specials if t not in (sot, eot)],
    }
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def text_tokenizer_folder(spec: Any, context_length: int) -> str:
    """A tokenizer folder for the text plugin that gives the ids of ``open_clip.get_tokenizer(spec.model)``."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    tokenizer = open_clip.get_tokenizer(spec.model, context_length=context_length)
    if isinstance(tokenizer, SimpleTokenizer):
        return clip_tokenizer_folder(tokenizer, context_length)
    if isinstance(tokenizer, HFTokenizer) and getattr(tokenizer.tokenizer, "is_fast", False):
        folder = cache_root() / "open_clip" / f"hf-tokenizer-{hashlib.sha1(spec.model.encode()).hexdigest()[:16]}"
        if not (folder / "tokenizer.json").is_file():
            tokenizer.tokenizer.save_pretrained(str(folder))
        return str(folder)
    raise ReleasedError(
        f"open_clip model {spec.model!r} uses a {type(tokenizer).__name__}, which the text plugin cannot read "
        "(it needs a tokenizers tokenizer.json)"
    )


# -- adapter ---------------------------------------------------------------------------------------------------


def _side(size: Any) -> int:
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ReleasedError(f"open_clip image size {size} is not square; the image plugin crops squares")
        return int(size[0])
    return int(size)


def _text_parts(model: nn.Module, name: str) -> tuple[nn.Module, str, dict[str, Any]]:
    """The module holding the text tower's parts, the state-dict prefix of those parts, and pooling settings."""
    from open_clip.transformer import TextTransformer

    if hasattr(model, "token_embedding"):  # CLIP: the text tower's parts are attributes of the model
        parts, prefix = model, ""
        pooling = {"pool_type": model.text_pool_type, "eos_id": getattr(model, "text_eos_id", None), "pad_id": 0}
    elif isinstance(getattr(model, "text", None), TextTransformer):
        parts, prefix = model.text, "text."
        if parts.cls_emb is not None or parts.use_pad_mask:
            raise ReleasedError(
                f"open_clip model {name!r}: text towers with a class token or pad mask are not supported"
            )
        pooling = {"pool_type": parts.pool_type, "eos_id": parts.eos_id, "pad_id": parts.pad_id}
    else:
        kind = type(getattr(model, "text", None)).__name__
        raise ReleasedError(
            f"open_clip model {name!r}: its text tower ({kind}) is not supported; use library transformers"
        )
    if pooling["pool_type"] not in ("argmax", "eos", "first", "last"):
        raise ReleasedError(f"open_clip model {name!r}: text pooling {pooling['pool_type']!r} is not supported")
    return parts, prefix, pooling


class OpenClipOptions(EncoderSpec):
    """``library: open_clip``: a CLIP model in open_clip's format, one of whose towers encodes the modality."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="open_clip architecture name (e.g. ViT-B-32).")
    tower: Literal["image", "text"] = Field(description="Which tower encodes this modality.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag (needs internet), instead of `path`.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments of create_model.")

    @model_validator(mode="after")
    def _weights(self) -> OpenClipOptions:
        if self.init == "random":
            raise ValueError("init: random is for timm and transformers; open_clip towers load released weights")
        if self.path is None and self.pretrained is None:
            raise ValueError("give `path` (a checkpoint file) or `pretrained` (an open_clip tag)")
        return self


@register_encoder_library("open_clip", OpenClipOptions)
def load_open_clip(spec: Any, base_dir: Path) -> Released:
    """Load the open_clip model of ``spec`` and wrap its ``spec.tower`` tower."""
    if spec.pooling != "default":
        raise ReleasedError(f"open_clip towers pool as open_clip does; pooling {spec.pooling!r} is not supported")
    model, path = create_clip(spec, base_dir)
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    config = final_model_config(spec.model, spec.kwargs)
    export: dict[str, Any] = {
        "model": spec.model,
        "pretrained": spec.pretrained,
        "path": path,
        "kwargs": dict(spec.kwargs),
        "tower": spec.tower,
        "model_class": type(model).__name__,
        "model_cfg": config,
        "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()},
    }
    if spec.tower == "image":
        visual = model.visual
        width = getattr(visual, "output_dim", None) or (config or {}).get("embed_dim")
        if width is None:
            raise ReleasedError(f"open_clip model {spec.model!r}: cannot tell the width of its image tower")
        patch = getattr(visual, "patch_size", None)
        patch = int(patch[0]) if isinstance(patch, list | tuple) else patch
        size = _side(preprocess.get("size", getattr(visual, "image_size", 224)))
        preprocessing = Preprocessing(
            input="pixels",
            image_size=size,
            patch_size=patch,
            mean=[float(m) for m in preprocess.get("mean", ())] or None,
            std=[float(s) for s in preprocess.get("std", ())] or None,
        )
        export["prefix"] = ""
        encoder: nn.Module = OpenClipImageTower(visual, int(width))
    else:
        parts, prefix, pooling = _text_parts(model, spec.model)
        projection = parts.text_projection
        if projection is None:
            width = parts.transformer.width
        elif isinstance(projection, nn.Linear):
            width = projection.out_features
        else:
            width = projection.shape[1]
        encoder = OpenClipTextTower(parts, width=int(width), **pooling)
        preprocessing = Preprocessing(
            input="tokens",
            tokenizer=text_tokenizer_folder(spec, encoder.context_length),
            max_length=encoder.context_length,
        )
        export.update(prefix=prefix, **pooling)
    export["preprocessing"] = dataclasses.asdict(preprocessing)
    return Released(encoder, preprocessing, "open_clip", export)
