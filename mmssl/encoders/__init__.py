"""Encoders, own and released, behind one interface: ``ModalityBatch -> EncoderOutput`` (token features and a
pooled embedding) with a ``width``.

- Own encoders: :mod:`mmssl.encoders.transformer` (a transformer with a visible-only path for masked training);
  modality plugins build theirs on it.
- Encoder libraries (:mod:`mmssl.encoders.base`): ``load_released(spec, base_dir)`` turns a recipe's
  ``modalities.<m>.encoder`` section into a ``Released``: an encoder module, the preprocessing its inputs need
  (which the modality plugin adopts through ``ModalityPlugin.adopt``), its blocks in input-to-output order (for
  layer-wise lr decay and ExPLoRA-style unfreezing) and what an exporter needs to write it back. Each library
  declares what its encoders can do (drop tokens, expose layers), so validation asks the library.

Importing this package registers the built-in libraries (``ENCODER_LIBRARIES`` imports it on first use); each
imports its own library (transformers, open_clip, timm) lazily.
"""

from mmssl.encoders import open_clip_adapter, timm_adapter, transformers_adapter  # noqa: F401  (registers them)
