"""Exporting a trained run in formats other tools load without mmssl: safetensors, Hugging Face, open_clip.

The built-in formats, registered in ``EXPORT_FORMATS`` on import (``@register_export_format``).
"""

from mmssl.export import hf, open_clip, safetensors_export  # noqa: F401  (registers the built-in formats)
