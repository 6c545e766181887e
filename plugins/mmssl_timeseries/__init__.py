"""First-party time-series modality: PatchTST-style patch tokens, jitter/scale/crop/warp views, masked patch
reconstruction, and the ``ucr_uea`` data source.

Registered through the ``mmssl.modalities`` entry point ``timeseries = "mmssl_timeseries:plugin"``.
"""

from __future__ import annotations

from mmssl.modality import Capabilities, ModalityPlugin
from mmssl_timeseries import ucr  # noqa: F401  (registers the ucr_uea source)
from mmssl_timeseries.augment import permute_segments, random_crop, random_view, time_warp
from mmssl_timeseries.decode import decode_series
from mmssl_timeseries.encoder import TokenEmbedder, build_encoder
from mmssl_timeseries.options import TimeSeriesOptions
from mmssl_timeseries.patches import normalize_patches, patchify, token_padding_mask, unpatchify
from mmssl_timeseries.processor import TimeSeriesProcessor, build_processor, load_processor
from mmssl_timeseries.revin import InstanceStats, denormalize, instance_normalize

plugin = ModalityPlugin(
    name="timeseries",
    description="Time series [C, L] (arrays, .npy/.csv/.parquet): jitter/scale/crop/warp views, "
    "masked patch reconstruction, PatchTST-style encoder.",
    capabilities=Capabilities(views=True, masking="continuous", pairing=True),
    options=TimeSeriesOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=build_encoder,
)

__all__ = [
    "InstanceStats",
    "TimeSeriesOptions",
    "TimeSeriesProcessor",
    "TokenEmbedder",
    "build_encoder",
    "build_processor",
    "decode_series",
    "denormalize",
    "instance_normalize",
    "load_processor",
    "normalize_patches",
    "patchify",
    "permute_segments",
    "plugin",
    "random_crop",
    "random_view",
    "time_warp",
    "token_padding_mask",
    "unpatchify",
]
