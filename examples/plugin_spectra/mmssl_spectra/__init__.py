"""mmssl-spectra: an example third-party modality plugin for mmssl (1-D spectra).

Registered through the ``mmssl.modalities`` entry point ``spectra = "mmssl_spectra:plugin"`` (see pyproject.toml);
the whole plugin is ``mmssl_spectra/spectra.py``, which a recipe can also name directly in ``plugins:``.
"""

from mmssl_spectra.spectra import (
    PatchEmbedder,
    SpectraOptions,
    SpectraProcessor,
    build_encoder,
    build_processor,
    decode_spectrum,
    load_processor,
    plugin,
)

__all__ = [
    "PatchEmbedder",
    "SpectraOptions",
    "SpectraProcessor",
    "build_encoder",
    "build_processor",
    "decode_spectrum",
    "load_processor",
    "plugin",
]
