"""Evaluations: registered on import of their modules."""

from mmssl.eval import knn, zero_shot  # noqa: F401  (registers evaluators)
