"""Hugging Face audio encoders behind mmssl's encoder interface.

Two families, told apart by their config:

* waveform models (wav2vec2, HuBERT, WavLM, data2vec-audio: ``conv_dim``) read the audio plugin's raw waveform
  batches (``features: waveform``): ``[B, S]`` at the feature extractor's ``sampling_rate`` with a sample-level
  padding mask. When the feature extractor has ``do_normalize``, each clip is brought to zero mean and unit
  variance over its own samples (padding set to 0), as ``Wav2Vec2FeatureExtractor`` does. Models with
  ``feat_extract_norm == "layer"`` get the padding as ``attention_mask``; the others (group norm, e.g.
  wav2vec2-base) see zero padding, as in Hugging Face pipelines. Token padding follows from the valid samples
  through the model's ``_get_feat_extract_output_lengths``.
* spectrogram models (Audio Spectrogram Transformer: ``num_mel_bins``) read the plugin's log-mel batches
  (``features: log_mel``, ``n_mels = num_mel_bins``), cropped or zero-padded to the model's ``max_length``
  frames. The plugin's torchaudio log-mel (HTK mel scale, Hann window, centred frames, ``log(mel + 1e-6)``) is
  close to, but not bit-identical with, the Kaldi fbank AST was trained on (Povey/Hanning window,
  pre-emphasis, dither, DC removal): expect a small shift in the inputs; fine-tuning absorbs it, but frozen
  features differ slightly from ``ASTFeatureExtractor``'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.encoders.base import Preprocessing, Released, ReleasedError, find_blocks, refuse_keep
from mmssl.encoders.transformer import masked_mean
from mmssl.modality import EncoderOutput, ModalityBatch


def feature_extractor_settings(path: str) -> dict[str, Any]:
    """The folder's feature extractor settings (``preprocessor_config.json``); {} when it has none."""
    try:
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(path)
    except Exception:  # no preprocessor_config.json, or none that transformers can build
        return {}
    keys = ("sampling_rate", "do_normalize", "return_attention_mask", "padding_value", "mean", "std", "max_length")
    return {k: getattr(extractor, k) for k in keys if getattr(extractor, k, None) is not None}


def normalize_waveform(wave: Tensor, valid: Tensor) -> Tensor:
    """Zero mean, unit variance per clip over its valid samples; padding set to 0.

    Shapes: wave [B, S] float, valid [B, S] bool -> [B, S].
    """
    weight = valid.to(wave.dtype)
    count = weight.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (wave * weight).sum(-1, keepdim=True) / count
    var = ((wave - mean).square() * weight).sum(-1, keepdim=True) / count
    return (wave - mean) / torch.sqrt(var + 1e-7) * weight


class HFWaveformEncoder(nn.Module):
    """A wav2vec2 / HuBERT-like model reading waveforms ``[B, S]`` with a sample padding mask ``[B, S]``.

    Args:
        model: The ``AutoModel``.
        normalize: Per-clip zero-mean unit-variance (the feature extractor's ``do_normalize``).
    """

    def __init__(self, model: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.width = int(model.config.hidden_size)
        self.normalize = normalize
        self.use_attention_mask = getattr(model.config, "feat_extract_norm", "group") == "layer"

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: data [B, S], padding_mask [B, S] -> tokens [B, T, D], pooled [B, D], padding [B, T]."""
        refuse_keep(batch, "a transformers audio encoder")
        wave = batch.data
        if not isinstance(wave, Tensor) or wave.ndim != 2:
            raise ReleasedError(
                "a wav2vec2/HuBERT-like encoder reads waveforms [B, S]; set the audio plugin's "
                f"`features: waveform` (got {type(wave).__name__} {getattr(wave, 'shape', '')})"
            )
        sample_padding = batch.padding_mask
        valid = torch.ones_like(wave, dtype=torch.bool) if sample_padding is None else ~sample_padding
        wave = wave.float()
        if self.normalize:
            wave = normalize_waveform(wave, valid)
        elif sample_padding is not None:
            wave = wave * valid
        attention = valid.long() if self.use_attention_mask and sample_padding is not None else None
        tokens = self.model(input_values=wave, attention_mask=attention).last_hidden_state
        padding = None
        if sample_padding is not None:
            lengths = self.model._get_feat_extract_output_lengths(valid.sum(-1))
            padding = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= lengths[:, None]
        return EncoderOutput(tokens=tokens, pooled=masked_mean(tokens, padding), padding_mask=padding)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        encoder = getattr(self.model, "encoder", None)
        blocks = getattr(encoder, "layers", None)
        blocks = list(blocks) if blocks is not None else find_blocks(self.model, self.model.config.num_hidden_layers)
        stem = [m for name, m in self.model.named_children() if name not in ("encoder", "adapter")]
        if encoder is not None and getattr(encoder, "pos_conv_embed", None) is not None:
            stem.append(encoder.pos_conv_embed)
        return stem, blocks


class HFSpectrogramEncoder(nn.Module):
    """An Audio Spectrogram Transformer reading normalised log-mel batches from the audio plugin.

    The plugin's ``{"mel": [B, 1, F, T], "lengths": [B]}`` (or a bare [B, F, T]) becomes the model's
    ``input_values`` [B, max_length, F]: frames past ``max_length`` are dropped, shorter clips zero-padded.

    Args:
        model: The ``ASTModel``.
        pooling: ``default`` (mean of the class and distillation tokens, AST's pooler), ``cls`` or ``mean``
            (of the non-padding patch tokens).
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.width = int(config.hidden_size)
        self.pooling = pooling
        self.frames = int(config.max_length)
        self.time_stride = int(config.time_stride)
        self.freq_patches = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        self.time_patches = (config.max_length - config.patch_size) // config.time_stride + 1

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        """Shapes: mel [B, 1, F, T] -> tokens [B, F' * T', D] (frequency-major, as AST), pooled [B, D]."""
        refuse_keep(batch, "a transformers audio spectrogram encoder")
        data = batch.data
        mel, lengths = (data.get("mel"), data.get("lengths")) if isinstance(data, dict) else (data, None)
        if not isinstance(mel, Tensor) or mel.ndim not in (3, 4):
            raise ReleasedError(
                "an AST encoder reads log-mel [B, n_mels, T]; set the audio plugin's `features: log_mel`"
            )
        mel = mel[:, 0] if mel.ndim == 4 else mel
        mel = mel[..., : self.frames]
        mel = F.pad(mel.float(), (0, self.frames - mel.shape[-1]))
        hidden = self.model(input_values=mel.transpose(1, 2)).last_hidden_state
        tokens = hidden[:, 2:]
        padding = None
        if lengths is not None:
            start = torch.arange(self.time_patches, device=tokens.device) * self.time_stride
            time_padding = start[None, :] >= lengths.to(tokens.device)[:, None]  # [B, T']
            padding = time_padding.repeat(1, self.freq_patches)  # token f * T' + t
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            pooled = masked_mean(tokens, padding)
        else:
            pooled = (hidden[:, 0] + hidden[:, 1]) / 2
        return EncoderOutput(tokens=tokens, pooled=pooled, padding_mask=padding)

    def layer_stack(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return [self.model.embeddings], find_blocks(self.model, self.model.config.num_hidden_layers)


def audio_encoder(model: nn.Module, path: str, spec: Any, export: dict[str, Any]) -> Released:
    """Wrap a transformers audio ``AutoModel`` loaded from ``path`` (called by ``load_transformers``)."""
    config = model.config
    settings = feature_extractor_settings(path)
    rate = int(settings.get("sampling_rate", 16000))
    export = {**export, "modality": "audio", "architecture": type(model).__name__, "config": config.to_dict()}
    export["feature_extractor"] = settings
    if hasattr(config, "num_mel_bins"):
        pooling = spec.pooling
        if settings.get("do_normalize", True):
            mean = float(settings.get("mean", -4.2677393))
            std = 2.0 * float(settings.get("std", 4.5689974))  # ASTFeatureExtractor divides by 2 * std
        else:
            mean, std = 0.0, 1.0
        preprocessing = Preprocessing(
            input="log_mel",
            sample_rate=rate,
            n_mels=int(config.num_mel_bins),
            mean=[mean],
            std=[std],
            max_length=int(config.max_length),
        )
        encoder: nn.Module = HFSpectrogramEncoder(model, pooling)
    elif hasattr(config, "conv_dim"):
        if spec.pooling == "cls":
            raise ReleasedError(f"encoder.pooling cls: {config.model_type} has no class token; use default or mean")
        pooling = "mean"
        normalize = bool(settings.get("do_normalize", True))
        preprocessing = Preprocessing(input="waveform", sample_rate=rate)
        encoder = HFWaveformEncoder(model, normalize)
        export["normalize"] = normalize
    else:
        raise ReleasedError(f"encoder.path {path!r}: audio model type {config.model_type!r} is not supported")
    export.update(pooling=pooling, preprocessing=preprocessing.to_json())
    return Released(encoder, preprocessing, "transformers", export)
