"""Objectives: registered on import of their modules."""

from mmssl.objectives import (  # noqa: F401  (registers objectives)
    alignment,
    contrastive,
    distillation,
    koleo,
    latent,
    masked,
    redundancy,
)
from mmssl.objectives.base import OBJECTIVES, ObjectiveOptions, register_objective

__all__ = ["OBJECTIVES", "ObjectiveOptions", "register_objective"]
