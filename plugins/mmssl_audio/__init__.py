"""First-party audio modality: soundfile decoding, log-mel features, waveform/SpecAugment views, masked
spectrogram modelling (SSAST/MAE) and an audio spectrogram transformer.

Registered through the ``mmssl.modalities`` entry point ``audio = "mmssl_audio:plugin"``. Importing it also
registers the ``asterisk_prompts`` data source (``mmssl_audio.asterisk``).
"""

from __future__ import annotations

from torch import nn

from mmssl.modality import Capabilities, ModalityPlugin
from mmssl_audio import asterisk  # noqa: F401  (registers the asterisk_prompts source)
from mmssl_audio.adopt import adopt
from mmssl_audio.decode import decode_audio
from mmssl_audio.encoder import AudioPatchEmbedder, build_encoder
from mmssl_audio.features import LogMel
from mmssl_audio.options import AudioOptions
from mmssl_audio.patches import patchify, token_padding, unpatchify
from mmssl_audio.processor import AudioProcessor, build_processor, compute_stats, load_processor


def _build_encoder(options: AudioOptions, processor: object | None = None) -> nn.Module:
    """The plugin's own spectrogram encoder; waveform batches (``features: waveform``) need a released one."""
    if options.features == "waveform":
        raise ValueError(
            "modalities.<audio>.options.features is waveform, which only a released encoder reads "
            "(modalities.<audio>.encoder, e.g. wav2vec2); the plugin's own encoder needs features: log_mel"
        )
    return build_encoder(options, processor)


plugin = ModalityPlugin(
    name="audio",
    description="Audio (WAV/FLAC/OGG, bytes, arrays) as log-mel patches: crop/gain/noise/SpecAugment views, "
    "masked spectrogram modelling, AST encoder.",
    capabilities=Capabilities(views=True, masking="continuous", pairing=True),
    options=AudioOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=_build_encoder,
    adopt=adopt,
)

__all__ = [
    "AudioOptions",
    "AudioPatchEmbedder",
    "AudioProcessor",
    "LogMel",
    "build_encoder",
    "build_processor",
    "compute_stats",
    "decode_audio",
    "load_processor",
    "patchify",
    "plugin",
    "token_padding",
    "unpatchify",
]
