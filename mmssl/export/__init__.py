"""Exporting a trained run in formats other tools load without mmssl: safetensors, Hugging Face,
open_clip, timm, torch.export.

The built-in formats, registered in ``EXPORT_FORMATS`` on import (``@register_export_format``).
"""

# Importing the modules registers the built-in formats.
from mmssl.export import hf, open_clip, safetensors_export, timm_export, torch_export  # noqa: F401
