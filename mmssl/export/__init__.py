"""Exporting a trained run in formats other tools load without mmssl: safetensors, Hugging Face, open_clip."""
