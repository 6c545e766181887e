"""Hugging Face transformers encoders: any ``AutoModel`` folder or hub id, read from safetensors only.

The architecture picks the input: text models (BERT-like) read the text plugin's token ids, vision models
(ViT-like) pixels, and audio models waveforms (wav2vec2 / HuBERT) or log-mel spectrograms (AST).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor, nn

from mmssl.encoders.base import (
    Preprocessing,
    Released,
    ReleasedError,
    find_blocks,
    refuse_keep,
    register_encoder_library,
    resolve_path,
)
from mmssl.encoders.transformer import masked_mean
from mmssl.modality import EncoderOutput, ModalityBatch
from mmssl.recipe import EncoderSpec


class HFTextEncoder(nn.Module):
    """A transformers text model (BERT-like) reading the text plugin's ``{"ids"}`` batches.

    Args:
        model: An ``AutoModel``.
        pooling: ``mean`` of the non-padding tokens (sentence-transformers) or ``cls`` (first token).
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.width = int(model.config.hidden_size)
        self.pooling = pooling

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: ids [B, L] -> tokens [B, L, D] (every position, special tokens included), pooled [B, D]."""
        refuse_keep(batch, "a transformers text encoder")
        ids: Tensor = batch.data["ids"]
        padding = batch.padding_mask
        attention = torch.ones_like(ids) if padding is None else (~padding).long()
        tokens = self.model(input_ids=ids, attention_mask=attention).last_hidden_state
        pooled = tokens[:, 0] if self.pooling == "cls" else masked_mean(tokens, padding)
        return EncoderOutput(tokens=tokens, pooled=pooled, padding_mask=padding)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        stem = [self.model.get_input_embeddings()]
        embeddings = getattr(self.model, "embeddings", None)
        return ([embeddings] if embeddings is not None else stem), find_blocks(
            self.model, self.model.config.num_hidden_layers
        )


def modality_of(config: Any) -> str:
    """``text``, ``vision`` or ``audio`` from a transformers config (by the fields the architecture has)."""
    if hasattr(config, "num_channels") and hasattr(config, "image_size"):
        return "vision"
    if hasattr(config, "conv_dim") or hasattr(config, "num_mel_bins"):
        return "audio"
    if hasattr(config, "vocab_size"):
        return "text"
    raise ReleasedError(f"cannot tell the input of transformers model type {config.model_type!r}")


def tokenizer_folder(path: str) -> str:
    """A folder holding the model's fast ``tokenizer.json`` (written to a temporary folder when missing)."""
    if (Path(path) / "tokenizer.json").is_file():
        return path
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # transformers raises OSError/ValueError subclasses that vary by version
        raise ReleasedError(f"encoder.path {path!r}: no tokenizer could be loaded: {err}") from err
    if not tokenizer.is_fast:
        raise ReleasedError(f"encoder.path {path!r}: its tokenizer has no fast (tokenizer.json) version")
    folder = tempfile.mkdtemp(prefix="mmssl-tokenizer-")
    tokenizer.save_pretrained(folder)
    return folder


def load_auto_model(path: str) -> nn.Module:
    """``AutoModel.from_pretrained`` from safetensors weights only (never unpickles)."""
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # one bar per weight file clutters training logs
    try:
        return AutoModel.from_pretrained(path, use_safetensors=True)
    except Exception as err:  # missing folder, no safetensors file, offline hub id, unknown architecture
        raise ReleasedError(f"encoder.path {path!r}: transformers could not load a safetensors model: {err}") from err


def random_model(spec: Any, path: str | None) -> nn.Module:
    """``AutoModel.from_config``: the config of ``path`` (or ``kwargs.model_type``) with ``kwargs`` applied."""
    from transformers import AutoConfig, AutoModel

    overrides = dict(spec.kwargs)
    try:
        if path is not None:
            config = AutoConfig.from_pretrained(path)
            for key, value in overrides.items():
                setattr(config, key, value)
        else:
            config = AutoConfig.for_model(overrides.pop("model_type"), **overrides)
        return AutoModel.from_config(config)
    except Exception as err:  # unknown model type, bad config values, missing folder
        where = f"the config of {path!r}" if path else "kwargs"
        raise ReleasedError(f"init: random: transformers cannot build a model from {where}: {err}") from err


class TransformersOptions(EncoderSpec):
    """``library: transformers``: any ``AutoModel`` folder or hub id, read from safetensors only; or, with
    ``init: random``, a config (of ``path``, or ``kwargs.model_type``) trained from random initialisation."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(
        None, description="A model folder or hub id (`package:NAME[/sub]` for a folder in a package)."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="init: random: config fields (with model_type when there is no path)."
    )

    @model_validator(mode="after")
    def _source(self) -> TransformersOptions:
        if self.path is None and not (self.init == "random" and "model_type" in self.kwargs):
            raise ValueError("give `path` (a model folder or hub id), or init: random with kwargs.model_type")
        if self.kwargs and self.init != "random":
            raise ValueError("`kwargs` (config fields) apply to init: random only")
        return self


@register_encoder_library("transformers", TransformersOptions, hub_ids=True)
def load_transformers(spec: Any, base_dir: Path) -> Released:
    """Load ``spec.path`` with ``AutoModel`` (or build it from its config, ``init: random``) and wrap it for its
    modality."""
    path = None if spec.path is None else resolve_path(spec.path, base_dir)
    model = random_model(spec, path) if spec.init == "random" else load_auto_model(path)
    if path is None:  # random init from kwargs alone: the plugin's own preprocessing (e.g. a trained tokenizer)
        pooling = "mean" if spec.pooling == "default" else spec.pooling
        export = {"path": None, "model_type": model.config.model_type, "pooling": pooling, "init": "random"}
        if modality_of(model.config) != "text":
            raise ReleasedError("init: random from kwargs alone supports text models; give `path` for others")
        preprocessing = Preprocessing(input="tokens", max_length=int(model.config.max_position_embeddings))
        return Released(HFTextEncoder(model, pooling), preprocessing, "transformers", export)
    kind = modality_of(model.config)
    export = {"path": path, "model_type": model.config.model_type}
    if kind == "text":
        pooling = "mean" if spec.pooling == "default" else spec.pooling
        preprocessing = Preprocessing(
            input="tokens",
            tokenizer=tokenizer_folder(path),
            max_length=int(getattr(model.config, "max_position_embeddings", 512)),
        )
        return Released(HFTextEncoder(model, pooling), preprocessing, "transformers", {**export, "pooling": pooling})
    if kind == "vision":
        from mmssl.encoders.hf_vision import vision_encoder

        return vision_encoder(model, path, spec, export)
    from mmssl.encoders.hf_audio import audio_encoder

    return audio_encoder(model, path, spec, export)
