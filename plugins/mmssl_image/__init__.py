"""First-party image modality: decoding, SimCLR views, MAE masking and a ViT encoder.

Registered through the ``mmssl.modalities`` entry point ``image = "mmssl_image:plugin"``.
"""

from __future__ import annotations

from mmssl.modality import Capabilities, ModalityPlugin
from mmssl_image.adopt import adopt
from mmssl_image.decode import decode_image
from mmssl_image.encoder import PatchEmbedder, build_encoder
from mmssl_image.options import ImageOptions
from mmssl_image.patches import normalize_patches, patchify, unpatchify
from mmssl_image.processor import ImageProcessor, build_processor, compute_stats, load_processor

plugin = ModalityPlugin(
    name="image",
    description="Images (PNG/JPEG/any PIL format, .npy, arrays): SimCLR views, MAE patch masking, ViT encoder.",
    capabilities=Capabilities(views=True, masking="continuous", pairing=True, local_views=True),
    options=ImageOptions,
    build_processor=build_processor,
    load_processor=load_processor,
    build_encoder=build_encoder,
    adopt=adopt,
)

__all__ = [
    "ImageOptions",
    "ImageProcessor",
    "PatchEmbedder",
    "build_encoder",
    "build_processor",
    "compute_stats",
    "decode_image",
    "load_processor",
    "normalize_patches",
    "patchify",
    "plugin",
    "unpatchify",
]
