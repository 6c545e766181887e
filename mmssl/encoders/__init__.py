"""Released encoders (Hugging Face transformers, open_clip, timm) behind the common encoder interface.

``load_released(spec, base_dir)`` turns a recipe's ``modalities.<m>.encoder`` section into a ``Released``: an
encoder module (``ModalityBatch -> EncoderOutput``), the preprocessing its inputs need (which the modality
plugin adopts through ``ModalityPlugin.adopt``), its blocks in input-to-output order (for layer-wise lr decay
and ExPLoRA-style unfreezing) and what an exporter needs to write it back in its library's format.
"""

from mmssl.released.base import ADAPTERS, Preprocessing, Released, ReleasedError, load_released, resolve_path

__all__ = ["ADAPTERS", "Preprocessing", "Released", "ReleasedError", "load_released", "resolve_path"]
