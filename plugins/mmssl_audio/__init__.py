"""First-party audio modality: soundfile decoding, log-mel features, waveform/SpecAugment views, masked
spectrogram modelling (SSAST/MAE) and an audio spectrogram transformer.

Registered through the ``mmssl.modalities`` entry point ``audio = "mmssl_audio:plugin"``. Importing it also
registers the ``asterisk_prompts`` data source (``mmssl_audio.asterisk``).
"""

from __future__ import annotations

from mmssl.modality import Capabilities, ModalityPlugin
from mmssl_audio import asterisk  # noqa: F401  (registers the asterisk_prompts source)
from mmssl_audio.decode import decode_audio
from mmssl_audio.encoder import AudioPatchEmbedder, build_encoder
from mmssl_audio.features import LogMel
from mmssl_audio.options import AudioOptions
from mmssl_audio.patches import patchify, token_padding, unpatchify
from mmssl_audio.processor import AudioProcessor, build_processor, compute_stats, load_processor

plugin = ModalityPlugin(
    name="audio",
    description="Audio (WAV/FLAC/OGG, bytes, arrays) as log-mel patches: crop/gain/noise/SpecAugment views, "
    "masked spectrogram modelling, AST encoder.",
    capabilities=Capabilities(views=True, masking="continuous", pairing=True),
    options=AudioOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=build_encoder,
    extras={"patchify": patchify, "unpatchify": unpatchify},
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
