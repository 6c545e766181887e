"""Imports the built-in adapters so they register in ``ADAPTERS``; each imports its library lazily."""

from mmssl.released import open_clip_adapter, timm_adapter, transformers_adapter  # noqa: F401
