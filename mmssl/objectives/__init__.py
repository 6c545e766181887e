"""Objectives: registered on import of their modules."""

from mmssl.objectives import alignment, contrastive, masked  # noqa: F401  (registers objectives)
from mmssl.objectives.base import OBJECTIVES, ObjectiveOptions, StepContext, register_objective

__all__ = ["OBJECTIVES", "ObjectiveOptions", "StepContext", "register_objective"]
