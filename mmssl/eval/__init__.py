"""Evaluations: registered on import of their modules."""

from mmssl.eval import knn, linear_probe, retrieval, zero_shot  # noqa: F401  (registers evaluators)
