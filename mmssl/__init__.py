"""mmssl: multimodal self-supervised pretraining with plugin modalities."""

__version__ = "0.1.0"
